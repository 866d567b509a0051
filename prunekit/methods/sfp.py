"""SFP: soft filter pruning — zero the weakest filters every epoch, keep training them, remove at the end.

Paper: Yang He, Guoliang Kang, Xuanyi Dong, Yanwei Fu, Yi Yang, "Soft Filter Pruning for Accelerating Deep
Convolutional Neural Networks", IJCAI 2018. https://arxiv.org/abs/1808.06866

Hard pruning removes a filter once and for all, so an early mistake cannot be undone and the network loses
capacity while it is still learning. SFP only sets the lowest-norm filters of every layer to zero at the end
of each epoch and lets them keep receiving gradients: a zeroed filter that turns out to matter grows back
and another one is zeroed at the next selection. The same fraction is zeroed in every layer. After the last
epoch the filters that are zero at that point are physically removed. Here the per-epoch selection is the
:class:`~prunekit.methods._regularizers.SoftFilterMask` callback, the per-layer counts come from the
structural engine's uniform allocation at the MAC/parameter target (so the end model meets it), filters tied
by a residual add are scored together and zeroed at the same indices, and ``criterion="fpgm"`` selects the
filters nearest the layer's geometric median instead (the FPGM variant of the same authors). The soft
mechanism needs at least two selections, i.e. ``prune_epochs >= 2 * interval``; with one selection SFP is a
one-shot norm cut and the run says so.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from ._config import MethodConfig, option
from ._filter_common import (
    cut_to_target, filter_groups, removal_counts, require_prune_epochs, weight_scores,
)
from ..train.config import method_train_config
from ._regularizers import SoftFilterMask
from ._registry import MethodResult, RunContext, Telemetry, register_method
from ..train import fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SFPConfig(MethodConfig):
    criterion: Literal["l2", "fpgm"] = "l2"  # filter score: L2 norm (paper sec. 3.2); fpgm: CVPR 2019 variant
    interval: int = option(1, ge=1)  # epochs between re-selections (paper Alg. 1 / code `epoch_prune=1`)


def soft_pruning_callback(model, ctx: RunContext, criterion: str = "l2", interval: int = 1) -> SoftFilterMask:
    """The SFP callback for ``model`` at ``ctx.target``: per-layer counts from the engine's uniform allocation."""
    groups = filter_groups(model, ctx)
    mods = dict(model.named_modules())
    layers = {f: mods[f] for g in groups for f in g.convs}
    counts = removal_counts(model, ctx, {f: weight_scores(m.weight, "l2") for f, m in layers.items()}, "uniform")
    n_prune = {g.convs[0]: counts.get(g.key, 0) for g in groups if g.convs}
    return SoftFilterMask(layers, n_prune, criterion, tied=[g.convs for g in groups if g.convs], every=interval)


@register_method("sfp", config=SFPConfig, kind="structured", needs=("train",),
                 telemetry=Telemetry(keys=("selections", "regrown"), engaged=lambda t: t["selections"] >= 2,
                                     what="soft re-selection of the zeroed filters during training",
                                     knob="raise prune_epochs to at least 2 x options.interval: SFP re-selects "
                                          "once per interval epochs, so one selection is a one-shot norm cut"))
def run(ctx: RunContext, cfg: SFPConfig) -> MethodResult:
    require_prune_epochs(ctx, "sfp")
    cb = soft_pruning_callback(ctx.model, ctx, cfg.criterion, cfg.interval)
    fit(ctx.model, ctx.train_data, method_train_config(ctx), callbacks=[cb])
    # the last epoch end zeroed the final selection: those filters have the lowest score (0) and go first
    report = cut_to_target(ctx.model, ctx, {f: weight_scores(m.weight, "l2") for f, m in cb.layers.items()},
                           allocation="uniform")
    telemetry = {"selections": len(cb.history), "regrown": cb.regrown()}
    return MethodResult(model=ctx.model, info={"criterion": cfg.criterion, **telemetry, **report},
                        telemetry=telemetry)
