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

Telemetry: the tick-tock rounds completed and the gates each round removed (masked); engaged when the ticks
masked any gate. ``info["epochs_trained"]`` counts the tocks and the ticks' batches in epochs of the
training data: the ticks add training that one-epoch peers do not get.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..train import fit
from ._config import MethodConfig, option
from ._filter_common import (
    ChannelGates, _graph, cut_to_target, filter_groups, first_batches, require_bn, require_prune_epochs,
    select_lowest_global, select_to_target,
)
from ..train.config import method_train_config
from ._regularizers import FreezeExcept, GateSGD, GateTaylor
from ._registry import MethodResult, RunContext, Telemetry, register_method


@dataclass(frozen=True)
class GateDecoratorConfig(MethodConfig):
    ticks_per_tock: int = option(10, ge=1)  # T, ticks between two tocks (reference run/vgg16/prune.json)
    tick_batches: int = option(20, ge=1)  # ours: batches per tick (the paper ticks on a subset of unstated size)
    l1: float = option(1e-3, ge=0)  # lambda, L1 weight on the gates during tocks (reference run/vgg16/prune.json)
    min_keep: float = option(0.1, ge=0, lt=1)  # floor: fraction of each layer's channels kept (the entry: 10%)


def taylor_scores_for_groups(taylor: GateTaylor, groups) -> dict[str, torch.Tensor]:
    """Sum the gate scores of the BatchNorms of each channel group (residual-tied channels are one group)."""
    return {g.key: sum(taylor.scores[b] for b in g.bns) for g in groups}


@register_method(
    "gate-decorator", config=GateDecoratorConfig, kind="structured", needs=("train",),
    telemetry=Telemetry(
        keys=("rounds", "ticks", "removed_per_round"),
        engaged=lambda t: sum(t["removed_per_round"]) > 0,
        what="tick phases masking gates by their Taylor scores",
        knob="lower options.min_keep or ask for a smaller target (the ticks mask only what the target needs, "
             "above the per-layer floor)"))
def run(ctx: RunContext, cfg: GateDecoratorConfig) -> MethodResult:
    require_bn(ctx.model, "gate-decorator")
    require_prune_epochs(ctx, "gate-decorator")
    model = ctx.model
    graph = _graph(model, ctx)  # traced before the gates exist; masking never changes the structure
    groups = [g for g in filter_groups(model, ctx, graph) if g.bns]
    mods = dict(model.named_modules())
    gates = ChannelGates(model, [b for g in groups for b in g.bns])
    bn_params = [p for g in groups for b in g.bns for p in (mods[b].weight, mods[b].bias)]
    keep = {g.key: torch.ones(g.width, dtype=torch.bool) for g in groups}
    gate_keep = {b: keep[g.key] for g in groups for b in g.bns}  # shared tensors: masking a group masks its gates
    n_ticks = ctx.prune_epochs * cfg.ticks_per_tock
    tick_data = first_batches(ctx.train_data, cfg.tick_batches)
    taylor = GateTaylor(gates)
    tick_cfg = method_train_config(ctx, epochs=1, scheduler="constant")
    tock_cfg = method_train_config(ctx, epochs=1)
    masked, removed_per_round = 0, []
    for tock in range(ctx.prune_epochs):
        masked_before = masked
        for tick in range(cfg.ticks_per_tock):
            taylor.reset()
            fit(model, tick_data, tick_cfg, callbacks=[FreezeExcept(model, bn_params), taylor,
                                                       GateSGD(gates, keep=gate_keep)])
            scores = taylor_scores_for_groups(taylor, groups)
            # channels still needed to meet the target, given the masks so far and these scores
            needed = sum(len(v) for v in select_to_target(
                model, ctx, _masked_scores(scores, keep), "global", groups, graph=graph)[0].values())
            ticks_left = n_ticks - (tock * cfg.ticks_per_tock + tick)
            n = math.ceil(max(needed - masked, 0) / ticks_left)
            masked += select_lowest_global(scores, keep, n, cfg.min_keep)
            _zero_masked(gates, gate_keep)
        removed_per_round.append(masked - masked_before)
        fit(model, ctx.train_data, tock_cfg, callbacks=[GateSGD(gates, l1=cfg.l1, keep=gate_keep)])
    scores = _masked_scores(taylor_scores_for_groups(taylor, groups), keep)  # the last tick's scores
    gates.fold_()
    report = cut_to_target(model, ctx, scores, allocation="global")
    epoch_len = len(ctx.train_data) if hasattr(ctx.train_data, "__len__") else None
    tick_epochs = n_ticks * len(tick_data) / epoch_len if epoch_len else None
    telemetry = {"rounds": ctx.prune_epochs, "ticks": n_ticks, "removed_per_round": removed_per_round}
    return MethodResult(model=model, telemetry=telemetry, info={
        "masked_before_cut": masked, "ticks": n_ticks, "tick_epochs": tick_epochs,
        "epochs_trained": ctx.prune_epochs + tick_epochs if tick_epochs is not None else None, **report})


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
