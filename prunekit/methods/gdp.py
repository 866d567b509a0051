"""GDP: one global mask over all filters, re-estimated while training so pruned filters can come back.

Paper: Shaohui Lin, Rongrong Ji, Yuchao Li, Yongjian Wu, Feiyue Huang, Baochang Zhang, "Accelerating
Convolutional Networks via Global & Dynamic Filter Pruning", IJCAI 2018.
https://www.ijcai.org/proceedings/2018/0336.pdf

GDP keeps a binary mask over every filter of the network and computes with the masked weights. The mask is
chosen by ranking a saliency score of all filters of all layers together, so layers lose different fractions.
It is *dynamic*: training keeps updating every filter's weights, masked ones included (their gradient is the
one of the masked network), and the mask is re-estimated from time to time, so a filter removed by mistake
can recover. When training ends the masked filters are removed. Here the mask is the
:class:`~prunekit.methods._regularizers.DynamicFilterMask` callback; the saliency defaults to the filter's L1
norm divided by its layer's mean (the paper's exact saliency function was not available to us, so it is an option,
``saliency``: ``l1`` or ``l2``). The paper budgets the mask as a fraction of all filters; here
``budget="cost"`` (the default) re-chooses every mask with the engine's global allocation for the
MAC/parameter target, so the masked network always costs what the target says, wherever the mask moves;
``budget="filters"`` keeps the paper's fixed filter count (the count the target needs at the first estimate),
whose cost drifts when the mask moves filters between cheap and costly layers (at a larger budget the cut
then lands below the target). ``static=True`` freezes the mask at the first estimate (the baseline the
paper's dynamic update is compared with).
"""
from __future__ import annotations

import logging

import torch

from ._filter_common import (
    check_target_reachable,
    check_choice, check_positive, check_training_context, filter_norms, method_options, restore_on_error,
    train_config,
)
from ._regularizers import DynamicFilterMask
from ._registry import MethodResult, RunContext, register_method

log = logging.getLogger(__name__)

DEFAULTS = {
    "update_every": 50,  # optimizer steps between two mask re-estimates
    "saliency": "l1",  # l1 | l2 filter norm, divided by the layer mean before the global ranking
    "static": False,  # True: keep the first mask (no dynamic update); the ablation baseline
    "budget": "cost",  # cost: every mask meets the MAC/param target | filters: the paper's fixed filter count
}
SALIENCIES = ("l1", "l2")
BUDGETS = ("cost", "filters")


def dynamic_mask_callback(model, ctx: RunContext, update_every: int = 50, saliency: str = "l1",
                          static: bool = False, budget: str = "cost") -> DynamicFilterMask:
    """The GDP callback for ``model`` at ``ctx.target`` (filters of single-producer channel groups)."""
    from ._filter_common import _graph, filter_groups, select_to_target

    check_choice("budget", budget, BUDGETS)
    p = 1 if saliency == "l1" else 2
    mods = dict(model.named_modules())
    graph = _graph(model, ctx)  # masking never changes the structure, so one trace serves every re-estimate
    groups = [g for g in filter_groups(model, ctx, graph) if len(g.convs) == 1]
    layers = {g.convs[0]: mods[g.convs[0]] for g in groups}
    key = {g.convs[0]: g.key for g in groups}

    def choose(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        sel, _ = select_to_target(model, ctx, {f: _normalised(s) for f, s in scores.items()}, "global", groups,
                                  graph=graph)
        masks = {}
        for f, s in scores.items():
            m = torch.ones(len(s), dtype=torch.bool)
            m[torch.as_tensor(sel.get(key[f], []), dtype=torch.long)] = False
            masks[f] = m
        return masks

    cb = DynamicFilterMask(layers, 0, update_every, saliency=lambda w: filter_norms(w, p), static=static,
                           choose=choose)  # the first mask is the target's cut under either budget
    cb.n_keep = sum(int(m.sum()) for m in cb.masks.values())
    if budget == "filters":
        cb.choose = None  # later masks keep that filter count
    return cb


def _normalised(s: torch.Tensor) -> torch.Tensor:
    return s / s.abs().mean().clamp_min(1e-12)


@register_method("gdp", kind="structured", defaults=DEFAULTS, needs_data=True)
def run(ctx: RunContext) -> MethodResult:
    from ._filter_common import cut_to_target
    from ..train import fit

    opts = method_options("gdp", ctx)
    check_positive(opts, "update_every")
    check_choice("saliency", opts["saliency"], SALIENCIES)
    check_training_context(ctx, "gdp")
    check_target_reachable(ctx.model, ctx)
    ctx.model.to(ctx.device)  # gates, masks and statistics are created on the training device
    cb = dynamic_mask_callback(ctx.model, ctx, int(opts["update_every"]), opts["saliency"], bool(opts["static"]),
                               opts["budget"])
    with restore_on_error(ctx.model):
        fit(ctx.model, ctx.train_data, train_config(ctx), callbacks=[cb])
    cb.apply()
    scores = {}
    for f, m in cb.layers.items():
        s = _normalised(cb.saliency(m.weight.detach()))
        s[~cb.masks[f]] = -1.0  # masked filters go first
        scores[f] = s
    kept = {f: int(m.sum()) for f, m in cb.masks.items()}
    report = cut_to_target(ctx.model, ctx, scores, allocation="global")
    return MethodResult(model=ctx.model, info={"mask_flips_0_to_1": cb.flips, "kept_per_layer": kept, **report})
