"""Dynamic Pruning with Feedback (DPF).

Paper: "Dynamic Model Pruning with Feedback", Tao Lin, Sebastian U. Stich, Luis Barba, Daniil Dmitriev,
Martin Jaggi. ICLR 2020. https://openreview.net/forum?id=SJem8lSFwB (arXiv:2006.07253)

DPF trains one network in a single run and ends sparse, without a retraining stage. It keeps the dense
weights and, every few steps, recomputes a magnitude mask from them at the sparsity a gradual schedule asks
for. The forward pass and the gradient are computed with the masked weights, but the update is applied to
the dense weights, pruned entries included. The error made by pruning is thereby fed back into training: a
weight pruned too early keeps moving and returns when its magnitude climbs back above the threshold at a
later mask refresh. Here the dense values live in the mask engine's ``"feedback"`` mode (the forward sees
``W * mask``, every entry is updated), the schedule is the cubic AGP ramp and the ranking is global.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from ..errors import ConfigError
from ..masks import get_masks, install_masks_, prunable_weights, remove_masks_, select_masks, get_pattern
from ..schedules import agp_cubic
from ..train.callbacks import Callback, TrainState
from ..train.config import method_train_config
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method
from ..train import fit

log = logging.getLogger(__name__)

__all__ = ["DPF", "DPFConfig", "dpf_masks", "run"]


def dpf_masks(weights: dict[str, torch.Tensor], sparsity: float, global_: bool = True) -> dict[str, torch.Tensor]:
    """Magnitude masks of the dense ``weights`` at ``sparsity`` (one global ranking, or per layer)."""
    scores = {k: w.detach().abs() for k, w in weights.items()}
    element = get_pattern("element")
    if global_:
        return select_masks(scores, element, global_sparsity=sparsity)
    return select_masks(scores, element, {k: sparsity for k in scores})


class DPF(Callback):
    """Dynamic pruning with feedback inside any :func:`prunekit.train.fit` run.

    ``schedule(step) -> sparsity`` (e.g. ``partial(agp_cubic, final=0.95, start=0, n=..., frequency=16)``);
    the masks are recomputed from the dense weights every ``frequency`` optimizer steps. At the end of
    training the masks become ordinary hard masks (pruned weights zero, gradients masked), so a following
    fine-tune keeps them. ``flips`` counts mask entries that changed (``revived``: 0 -> 1) per update.

    Example:
        >>> from functools import partial
        >>> cb = DPF(partial(agp_cubic, final=0.9, start=0, n=4, frequency=16), frequency=16)
        >>> cb.revived
        0
    """

    def __init__(self, schedule, *, frequency: int = 16, global_: bool = True, ignore=(), exempt=(),
                 harden_at_end: bool = True):
        if not isinstance(frequency, int) or isinstance(frequency, bool) or frequency < 1:
            raise ConfigError(f"frequency={frequency!r} must be a positive int (optimizer steps between mask "
                              "refreshes; the paper uses 16)")
        self.schedule, self.frequency, self.global_ = schedule, frequency, global_
        self.ignore, self.exempt, self.harden_at_end = tuple(ignore), tuple(exempt), harden_at_end
        self.fqns: list[str] = []
        self.revived = 0
        self.pruned = 0
        self.updates: list[dict] = []  # {"step", "sparsity", "revived", "pruned"} per refresh

    def refresh(self, model: nn.Module, step: int) -> None:
        sparsity = float(self.schedule(step))
        old = {k: v.clone() for k, v in get_masks(model).items() if k in self.fqns}
        remove_masks_(model, self.fqns, apply=False)  # dense values back into the parameters
        params = prunable_weights(model, self.ignore, self.exempt)
        masks = dpf_masks(params, sparsity, self.global_)
        install_masks_(model, masks, mode="feedback")
        revived = sum(int((m & ~old[k]).sum()) for k, m in masks.items() if k in old)
        pruned = sum(int((~m & old[k]).sum()) for k, m in masks.items() if k in old)
        self.revived += revived
        self.pruned += pruned
        self.updates.append({"step": step, "sparsity": sparsity, "revived": revived, "pruned": pruned})

    def on_train_start(self, state: TrainState) -> None:
        self.fqns = list(prunable_weights(state.model, self.ignore, self.exempt))
        self.refresh(state.model, state.step)

    def on_after_step(self, state: TrainState) -> None:
        if state.step % self.frequency == 0:
            self.refresh(state.model, state.step)

    def on_train_end(self, state: TrainState) -> None:
        if self.harden_at_end:
            masks = {k: v.clone() for k, v in get_masks(state.model).items() if k in self.fqns}
            remove_masks_(state.model, self.fqns, apply=True)
            install_masks_(state.model, masks, mode="hard")


@dataclass(frozen=True)
class DPFConfig(MethodConfig):
    frequency: int = option(16, ge=1)  # optimizer steps between mask refreshes (paper, sec. 5: every 16 iterations)
    ramp_fraction: float = option(0.6, gt=0, le=1)  # share of the steps the cubic ramp (Zhu & Gupta) takes; entry check: 3 of 5 epochs
    global_: bool = True  # one magnitude ranking across layers (paper: global unstructured magnitude)
    exempt: tuple[str, ...] = ()  # ours: ("first",) / ("last",) keep those layers dense


@register_method("dpf", config=DPFConfig, kind="unstructured", needs=("train",), smoke={"frequency": 1},
                 status="partial", left_out=(
    "the structured variant (whole filters by norm, removed with surgery) is not implemented; only the "
    "unstructured global-magnitude DPF is"),
    telemetry=Telemetry(keys=("refreshes", "flips", "revived", "revived_after_ramp"),
                        engaged=lambda t: t["revived"] > 0,
                        what="feedback: pruned weights kept training and came back at a mask refresh",
                        knob="raise prune_epochs or lower options.frequency (weights return only at a refresh "
                             "after they regrow)"))
def run(ctx: RunContext, cfg: DPFConfig) -> MethodResult:
    """Train ``ctx.prune_epochs`` with DPF; the model ends with hard masks at the target sparsity."""
    train = method_train_config(ctx, max(1, ctx.prune_epochs))
    total = train.epochs * len(ctx.train_data)
    n = max(1, int(cfg.ramp_fraction * total) // cfg.frequency)  # refreshes on the ramp
    if n * cfg.frequency > total:
        raise ConfigError(f"options.frequency={cfg.frequency} with ramp_fraction={cfg.ramp_fraction}: the ramp "
                          f"needs {n * cfg.frequency} steps but training has {total}; lower frequency or raise "
                          f"prune_epochs")
    cb = DPF(partial(agp_cubic, final=ctx.target_value, start=0, n=n, frequency=cfg.frequency),
             frequency=cfg.frequency, global_=cfg.global_, ignore=ctx.ignore, exempt=cfg.exempt)
    fit(ctx.model, ctx.train_data, train, callbacks=[cb])
    masks = get_masks(ctx.model)
    kept = sum(int(masks[k].sum()) for k in cb.fqns)
    numel = sum(masks[k].numel() for k in cb.fqns)
    after = sum(u["revived"] for u in cb.updates if u["step"] > n * cfg.frequency)
    telemetry = {"refreshes": len(cb.updates), "flips": cb.revived + cb.pruned, "revived": cb.revived,
                 "revived_after_ramp": after}
    return MethodResult(ctx.model, info={"sparsity": 1 - kept / numel, "revived": cb.revived,
                                         "revived_after_ramp": after, "refreshes": len(cb.updates)},
                        telemetry=telemetry)
