"""Gate Decorator: channel gates after BatchNorm, global Taylor importance on the gates, tick-tock schedule.

Paper: Zhonghui You, Kun Yan, Jinmian Ye, Meng Ma, Ping Wang, "Gate Decorator: Global Filter Pruning Method
for Accelerating Deep Convolutional Neural Networks", NeurIPS 2019. https://arxiv.org/abs/1909.08174

Each BatchNorm gets a per-channel gate ``g`` multiplying its output. The importance of a channel is the
first-order Taylor estimate of how much the loss would change if its gate were set to zero, ``|g * dL/dg|``,
summed over a pass of data; because it is a loss change, it is comparable across layers, so channels are
ranked globally and channels joined by residual adds are scored as one group. Pruning alternates two
phases: a *tick* trains only the gates and BatchNorms on a little data, collects the scores and masks the
lowest few percent of the remaining channels; after several ticks a *tock* trains the whole network for an
epoch with an L1 penalty on the gates, so it adapts to the removals and prepares the next ones. At the end
the gates are merged into the BatchNorm affine parameters and the masked channels are sliced out. Here the
gates are :class:`~prunekit.methods._filter_common.ChannelGates` (hooks; the model's modules are unchanged),
the tick and tock are short :func:`prunekit.train.fit` runs with the callbacks of
:mod:`prunekit.methods._regularizers`, there are ``ctx.prune_epochs`` tocks of ``ticks_per_tock`` ticks, and
each tick masks its share of the channels still needed to reach the MAC/parameter target (re-estimated from
the engine's exact cost model with the current scores), so the masks meet the target at the last tick; the
final cut goes through the structural engine. The FLOPs-aware score variant is not included.
"""
from __future__ import annotations

import logging
import math

import torch

from ._filter_common import (
    check_target_reachable,
    ChannelGates, check_positive, check_training_context, first_batches, method_options, restore_on_error,
    select_lowest_global, train_config,
)
from ._regularizers import FreezeExcept, GateSGD, GateTaylor
from ._registry import MethodResult, RunContext, register_method

log = logging.getLogger(__name__)

DEFAULTS = {
    "ticks_per_tock": 10,  # T: ticks between two tocks (released VGG-16 config)
    "tick_batches": 20,  # batches of training data per tick (the paper ticks on a subset)
    "l1": 1e-3,  # lambda: L1 weight on the gates during tocks (released VGG-16 config)
    "min_keep": 0.1,  # fraction of each layer's channels that is never pruned
}


def taylor_scores_for_groups(taylor: GateTaylor, groups) -> dict[str, torch.Tensor]:
    """Sum the gate scores of the BatchNorms of each channel group (residual-tied channels are one group)."""
    return {g.key: sum(taylor.scores[b] for b in g.bns) for g in groups}


@register_method("gate-decorator", kind="structured", defaults=DEFAULTS, needs_data=True)
def run(ctx: RunContext) -> MethodResult:
    from ._filter_common import _graph, cut_to_target, filter_groups, require_bn, select_to_target
    from ..train import fit

    opts = method_options("gate-decorator", ctx)
    check_positive(opts, "ticks_per_tock", "tick_batches")
    check_positive(opts, "l1", allow_zero=True)
    check_training_context(ctx, "gate-decorator")
    check_target_reachable(ctx.model, ctx)
    ctx.model.to(ctx.device)  # gates, masks and statistics are created on the training device
    require_bn(ctx.model, "gate-decorator")
    model = ctx.model
    graph = _graph(model, ctx)  # traced before the gates exist; masking never changes the structure
    groups = [g for g in filter_groups(model, ctx, graph) if g.bns]
    mods = dict(model.named_modules())
    gates = ChannelGates(model, [b for g in groups for b in g.bns])
    bn_params = [p for g in groups for b in g.bns for p in (mods[b].weight, mods[b].bias)]
    keep = {g.key: torch.ones(g.width, dtype=torch.bool) for g in groups}
    gate_keep = {b: keep[g.key] for g in groups for b in g.bns}  # shared tensors: masking a group masks its gates
    n_ticks = ctx.prune_epochs * int(opts["ticks_per_tock"])
    tick_data = first_batches(ctx.train_data, int(opts["tick_batches"]))
    taylor = GateTaylor(gates)
    tick_cfg = train_config(ctx, epochs=1, scheduler="constant")
    tock_cfg = train_config(ctx, epochs=1)
    masked = 0
    try:
        with restore_on_error(model):
            for tock in range(ctx.prune_epochs):
                for tick in range(int(opts["ticks_per_tock"])):
                    taylor.reset()
                    fit(model, tick_data, tick_cfg, callbacks=[
                        FreezeExcept(model, bn_params), taylor, GateSGD(gates, keep=gate_keep)])
                    scores = taylor_scores_for_groups(taylor, groups)
                    # channels still needed to meet the target, given the masks so far and these scores
                    needed = sum(len(v) for v in select_to_target(
                        model, ctx, _masked_scores(scores, keep), "global", groups, graph=graph)[0].values())
                    ticks_left = n_ticks - (tock * int(opts["ticks_per_tock"]) + tick)
                    n = math.ceil(max(needed - masked, 0) / ticks_left)
                    masked += select_lowest_global(scores, keep, n, float(opts["min_keep"]))
                    _zero_masked(gates, gate_keep)
                fit(model, ctx.train_data, tock_cfg, callbacks=[GateSGD(gates, l1=float(opts["l1"]), keep=gate_keep)])
    except BaseException:
        gates.remove()
        raise
    scores = _masked_scores(taylor_scores_for_groups(taylor, groups), keep)  # the last tick's scores
    gates.fold_()
    report = cut_to_target(model, ctx, scores, allocation="global")
    return MethodResult(model=model, info={"masked_before_cut": masked, "ticks": n_ticks, **report})


def _masked_scores(scores: dict[str, torch.Tensor], keep: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, sc in scores.items():
        sc = sc.detach().cpu().clone()  # scores of a GPU model; the masks live on the CPU
        sc[~keep[key]] = -1.0  # masked channels go first
        out[key] = sc
    return out


def _zero_masked(gates: ChannelGates, keep: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for b, g in gates.gates.items():
            g[~keep[b]] = 0.0
