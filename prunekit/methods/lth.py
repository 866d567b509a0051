"""Lottery tickets: iterative magnitude pruning with rewinding.

Paper: "The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural Networks", Jonathan Frankle,
Michael Carbin. ICLR 2019. https://arxiv.org/abs/1803.03635

A randomly initialised dense network contains sparse subnetworks that, trained on their own from the same
initial values, match the dense network. They are found by training, removing a fixed fraction of the
smallest surviving weights, resetting the survivors to their initial values, and repeating. The mask plus
the initial values is the "winning ticket"; the same mask with fresh random values trains worse, which is
the control. Small networks prune each layer at its own rate per round (20% of a fully connected hidden
layer, 10% of the output layer, 10-15% of a convolution); deep ones prune globally. Rewinding to an early
training step instead of step 0 (late resetting, Frankle et al. 2019) makes tickets appear in larger networks.

Learning-rate schedule of the rounds: resetting to θ₀ and training "again" (paper, sec. 1, step 4 of the
procedure) means each round replays the whole original run, schedule included. With late resetting the
survivors go back to their values at step k, so the round continues that run from step k — the learning rate
of steps k .. T of the original schedule, T - k steps — instead of restarting the schedule at step 0 from
step-k weights, which no run of the paper does (see :func:`prunekit.train.rewind.find_ticket`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..train.rewind import find_ticket, layer_rates, reinit_
from ..train.config import method_train_config
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

__all__ = ["LTHConfig", "run"]


@dataclass(frozen=True)
class LTHConfig(MethodConfig):
    rate: float = option(0.2, gt=0, lt=1)  # per round, of a fully connected layer's survivors (paper Fig. 2: 20%; global too)
    conv_rate: float = option(0.1, gt=0, lt=1)  # convolutions (paper Fig. 2: Conv-2/4 10%, Conv-6 15%)
    output_rate: float = option(0.1, gt=0, lt=1)  # the output layer (paper Fig. 2, mnist_fc constants: 10%)
    round_epochs: int | None = option(None, ge=1)  # ours: epochs per round (None: ctx.prune_epochs)
    rewind_step: int = option(0, ge=0)  # optimizer step rewound to (paper: 0 = θ₀; > 0 = late resetting)
    allocation: Literal["uniform", "global"] = "uniform"  # per-layer rates (LeNet, Conv-2/4/6); global (VGG, ResNet)
    exempt: tuple[str, ...] = ()  # ("first",) / ("last",) keep that layer dense (ours)
    reinit: bool = False  # the paper's control: same mask, fresh random weights


@register_method("lth", config=LTHConfig, kind="unstructured", needs=("train",),
                 telemetry=Telemetry(keys=("rounds", "rewinds", "rewound_to", "round_steps"),
                                     engaged=lambda t: t["rewinds"] >= 1 and t["rewound_to"] < t["round_steps"],
                                     what="rewinding the survivors to an earlier point of training",
                                     knob="lower options.rewind_step below the steps of one round (0 = the "
                                          "initialisation) or raise round_epochs / prune_epochs"))
def run(ctx: RunContext, cfg: LTHConfig) -> MethodResult:
    """Find a ticket on ``ctx.train_data``; the model returned holds the rewound ticket (train it next)."""
    train = method_train_config(ctx, cfg.round_epochs if cfg.round_epochs is not None else max(1, ctx.prune_epochs))
    if cfg.allocation == "uniform":
        rate = layer_rates(ctx.model, rate=cfg.rate, conv_rate=cfg.conv_rate, output_rate=cfg.output_rate,
                           ignore=tuple(ctx.ignore), exempt=cfg.exempt)
    else:
        rate = cfg.rate
    ticket = find_ticket(ctx.model, ctx.train_data, train, sparsity=ctx.target_value, rate=rate,
                         rewind_step=cfg.rewind_step, allocation=cfg.allocation, exempt=cfg.exempt,
                         ignore=tuple(ctx.ignore))
    if cfg.reinit:
        reinit_(ctx.model, seed=ctx.seed + 1)
    h = ticket.history
    telemetry = {"rounds": len(h), "rewinds": len(h), "rewound_to": ticket.rewind_step, "round_steps": h[0]["steps"]}
    return MethodResult(ctx.model, callbacks=[], telemetry=telemetry,
                        info={"rounds": h, "rewind_step": ticket.rewind_step, "sparsity": h[-1]["sparsity"]})
