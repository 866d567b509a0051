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
filters nearest the layer's geometric median instead (the FPGM variant of the same authors).
"""
from __future__ import annotations

import logging

from ._filter_common import (
    check_target_reachable,
    check_choice, check_training_context, filter_norms, method_options, restore_on_error, train_config,
)
from ._regularizers import SoftFilterMask
from ._registry import MethodResult, RunContext, register_method

log = logging.getLogger(__name__)

DEFAULTS = {
    "criterion": "l2",  # l2 (SFP) | fpgm (geometric-median variant)
}
CRITERIA = ("l2", "fpgm")


def soft_pruning_callback(model, ctx: RunContext, criterion: str = "l2") -> SoftFilterMask:
    """The SFP callback for ``model`` at ``ctx.target``: per-layer counts from the engine's uniform allocation."""
    from ._filter_common import filter_groups, removal_counts

    groups = filter_groups(model, ctx)
    mods = dict(model.named_modules())
    layers = {f: mods[f] for g in groups for f in g.convs}
    counts = removal_counts(model, ctx, {f: filter_norms(m.weight) for f, m in layers.items()}, "uniform")
    n_prune = {g.convs[0]: counts.get(g.key, 0) for g in groups if g.convs}
    return SoftFilterMask(layers, n_prune, criterion, tied=[g.convs for g in groups if g.convs])


@register_method("sfp", kind="structured", defaults=DEFAULTS, needs_data=True)
def run(ctx: RunContext) -> MethodResult:
    from ._filter_common import cut_to_target
    from ..train import fit

    opts = method_options("sfp", ctx)
    check_choice("criterion", opts["criterion"], CRITERIA)
    check_training_context(ctx, "sfp")
    check_target_reachable(ctx.model, ctx)
    ctx.model.to(ctx.device)  # gates, masks and statistics are created on the training device
    cb = soft_pruning_callback(ctx.model, ctx, opts["criterion"])
    with restore_on_error(ctx.model):
        fit(ctx.model, ctx.train_data, train_config(ctx), callbacks=[cb])
    # the last epoch end zeroed the final selection: those filters have the smallest norm (0) and go first
    scores = {f: filter_norms(m.weight) for f, m in cb.layers.items()}
    report = cut_to_target(ctx.model, ctx, scores, allocation="uniform")
    regrown = _regrown(cb.history)
    return MethodResult(model=ctx.model, info={"criterion": opts["criterion"], "selections": len(cb.history),
                                               "regrown_between_epochs": regrown, **report})


def _regrown(history) -> int:
    """Filters zeroed at one selection and not selected at the next (they grew back)."""
    n = 0
    for a, b in zip(history, history[1:]):
        for f, idx in a.items():
            n += len(set(idx.tolist()) - set(b.get(f, idx).tolist()))
    return n
