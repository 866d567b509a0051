"""ADMM weight pruning (Zhang et al.).

Paper: "A Systematic DNN Weight Pruning Framework using Alternating Direction Method of Multipliers", Tianyun
Zhang, Shaokai Ye, Kaiqi Zhang, Jian Tang, Wujie Wen, Makan Fardad, Yanzhi Wang. ECCV 2018.
https://arxiv.org/abs/1804.03294

Pruning is posed as loss minimisation under a cardinality constraint per layer (at most l_i non-zero weights
in layer i) and solved with the alternating direction method of multipliers. A copy Z_i of each layer's
weights lives in the constraint set and scaled duals U_i tie it to W_i. Each of K iterations trains W on the
loss plus (rho/2) * sum_i ||W_i - Z_i + U_i||^2 for a fixed number of steps (the W-step), projects W_i + U_i
onto the set by keeping its l_i largest magnitudes (the Z-step, in closed form) and adds the residual
W_i - Z_i to U_i. The quadratic term drags the weights that will be cut towards zero during training, so
the final hard prune to the per-layer ratios removes little; the survivors are then retrained with the
pruned weights held at zero (here: the fine-tune the caller runs with the installed hard masks). The
per-layer ratios are hand-set in the paper (``per_layer``); without them every layer gets the target.
The constrained-training block is :class:`prunekit.train.constrained.ConstrainedTraining`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigError
from ..masks import get_pattern, install_masks_
from ..train import fit
from ..train.constrained import ConstrainedTraining, Projection
from ..train.config import method_train_config
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

__all__ = ["ADMMConfig", "run"]


@dataclass(frozen=True)
class ADMMConfig(MethodConfig):
    iterations: int = option(30, ge=1)  # K ADMM iterations (reference MNIST code: 30 x 5000 steps); the W-steps share prune_epochs equally
    rho: float = option(1e-4, ge=0)  # penalty rho (reference MNIST code, LeNet-5: 1e-4)
    rho_factor: float = option(1.0, ge=1)  # ours: rho multiplied after each iteration (progressive ADMM); paper: fixed rho
    rho_max: float = option(1.0, gt=0)  # ours: cap of the growing rho (only with rho_factor > 1)
    pattern: str = "element"  # paper: single weights (card(W_i) <= l_i); "N:M" (e.g. "2:4") or "row": ours
    allocation: Literal["uniform", "global"] = "uniform"  # paper: per-layer ratios by hand; uniform = every layer at the target (ours)
    per_layer: dict = field(default_factory=dict)  # {layer: sparsity}: the paper's hand-set ratios (sec. 4, MNIST 80/92/99.1/93%)
    optimizer: Literal["adam", "protocol"] = "adam"  # W-step optimiser (reference MNIST code: Adam); protocol = ctx.train_config's
    lr: float = option(1e-3, gt=0)  # W-step learning rate, constant (reference MNIST code: Adam 1e-3); unused with "protocol"
    weight_decay: float = option(5e-5, ge=0)  # L2 during the W-steps (reference MNIST code: 5e-5); unused with "protocol"
    exempt: tuple[str, ...] = ()  # ours: ("first",) / ("last",) keep those layers dense

    def __post_init__(self):
        if self.per_layer and self.allocation == "global":
            raise ValueError(f"options['per_layer']={self.per_layer!r} sets single layers, which a global ranking "
                             f"cannot honour; drop per_layer or use allocation='uniform'")


def _engaged(t: dict) -> bool:
    return t["rho_final"] > 0 and t["updates"] >= 2 and t["gap_last"] < t["gap_first"]


@register_method("admm", config=ADMMConfig, kind="unstructured", needs=("train",), smoke={"iterations": 2},
                 telemetry=Telemetry(keys=("updates", "gap_first", "gap_last", "flips", "rho_final"), engaged=_engaged,
                                     what="the ADMM penalty pulling W towards its sparse projection Z (||W - Z|| fell "
                                          "over the iterations)",
                                     knob="raise options.rho (the penalty), options.iterations or prune_epochs"))
def run(ctx: RunContext, cfg: ADMMConfig) -> MethodResult:
    """K x (W-step with the penalty, Z-step, U-step), then the hard prune; the caller retrains with the masks."""
    fixed = get_pattern(cfg.pattern).fixed_sparsity
    if fixed is not None and abs(fixed - ctx.target_value) > 1e-9:
        raise ConfigError(f"target={ctx.target!r} with options.pattern={cfg.pattern!r}: that pattern's sparsity is "
                          f"{fixed:g}; use target='sparsity={fixed:g}'")
    sparsity = None if fixed is not None else ctx.target_value
    projection = Projection(sparsity=sparsity, pattern=cfg.pattern, per_layer=dict(cfg.per_layer),
                            scope="global" if cfg.allocation == "global" else "layer")
    train = method_train_config(ctx, max(1, ctx.prune_epochs))
    if cfg.optimizer == "adam":  # a tiny rho acts through Adam's scale-free steps (reference code)
        train = train.replace(optimizer="adam", lr=cfg.lr, weight_decay=cfg.weight_decay, scheduler="constant",
                              warmup_steps=0)
    total = train.epochs * len(ctx.train_data)
    block = ConstrainedTraining(projection, rho=cfg.rho, rho_factor=cfg.rho_factor, rho_max=max(cfg.rho_max, cfg.rho),
                                interval=max(1, total // cfg.iterations), unit="step", max_updates=cfg.iterations,
                                ignore=ctx.ignore, exempt=cfg.exempt)
    block.setup(ctx.model)
    fit(ctx.model, ctx.train_data, train, callbacks=[block])
    masks = projection.masks({k: w.detach() for k, w in block.weights.items()})  # hard prune W to the ratios
    install_masks_(ctx.model, masks, mode="hard")
    kept = sum(int(m.sum()) for m in masks.values())
    numel = sum(m.numel() for m in masks.values())
    gaps = [h["gap"] for h in block.history]
    telemetry = {"updates": block.updates, "gap_first": gaps[0], "gap_last": gaps[-1], "flips": block.flips,
                 "rho_final": block.rho}
    layers = {k: 1 - float(m.float().mean()) for k, m in masks.items()}
    return MethodResult(ctx.model, info={"sparsity": 1 - kept / numel, "layer_sparsity": layers, "gaps": gaps,
                                         "history": block.history, "epochs_trained": train.epochs},
                        telemetry=telemetry)
