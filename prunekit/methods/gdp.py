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
``saliency``: ``l1`` or ``l2``). The paper budgets the mask as a fraction of all filters: ``budget="filters"``
(the default) keeps the filter count the target needs at the first estimate, so the masked network's cost
drifts when the mask moves filters between cheap and costly layers (the final cut still meets the target:
masked filters go first, then the engine's global allocation tops up or gives back). ``budget="cost"`` (ours)
re-chooses every mask with the engine's global allocation for the MAC/parameter target, so the masked
network always costs what the target says, wherever the mask moves. ``static=True`` freezes the mask at the first estimate (the baseline the
paper's dynamic update is compared with).

The paper gives no re-estimation interval; it is set in epochs (``update_epochs``), so a short run still
re-estimates (an interval in steps of 50, the entry's, never fired inside the 36-step epochs of our
benchmark). Telemetry: the re-estimates after the first mask, the mask positions they changed, and the
filters that came back (0 -> 1). The dynamic mask engaged when some re-estimate changed the mask.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..train import fit
from ._config import MethodConfig, option
from ._filter_common import (_graph, check_choice, cut_to_target, filter_groups, filter_norms, select_to_target,
                             require_prune_epochs, steps_per_epoch)
from ..train.config import method_train_config
from ._regularizers import DynamicFilterMask
from ._registry import MethodResult, RunContext, Telemetry, register_method


@dataclass(frozen=True)
class GDPConfig(MethodConfig):
    update_epochs: float = option(0.3, gt=0)  # epochs between re-estimates (paper: none; entry: 50 of 157 steps)
    saliency: Literal["l1", "l2"] = "l1"  # filter norm / layer mean, global (paper's saliency not found; entry: l1)
    static: bool = False  # ours: keep the first mask (the entry's static-pruning baseline, check (c))
    budget: Literal["filters", "cost"] = "filters"  # paper: a fixed filter count (sec. 3) | cost: ours, each mask meets the target


BUDGETS = ("filters", "cost")


def dynamic_mask_callback(model, ctx: RunContext, update_every: int = 50, saliency: str = "l1",
                          static: bool = False, budget: str = "filters") -> DynamicFilterMask:
    """The GDP callback for ``model`` at ``ctx.target`` (filters of single-producer channel groups).

    ``update_every`` is in optimizer steps; :func:`run` derives it from ``update_epochs``.
    """
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


@register_method(
    "gdp", config=GDPConfig, kind="structured", needs=("train",),
    telemetry=Telemetry(
        keys=("mask_updates", "mask_flips", "recovered"),
        engaged=lambda t: t["mask_flips"] > 0,
        what="the dynamic global mask changing during training",
        knob="lower options.update_epochs or raise prune_epochs (the mask is re-estimated every update_epochs "
             "epochs; static=True fixes it by design)"))
def run(ctx: RunContext, cfg: GDPConfig) -> MethodResult:
    require_prune_epochs(ctx, "gdp")
    update_every = max(1, round(cfg.update_epochs * steps_per_epoch(ctx.train_data)))
    cb = dynamic_mask_callback(ctx.model, ctx, update_every, cfg.saliency, cfg.static, cfg.budget)
    fit(ctx.model, ctx.train_data, method_train_config(ctx), callbacks=[cb])
    cb.apply()
    scores = {}
    for f, m in cb.layers.items():
        s = _normalised(cb.saliency(m.weight.detach()))
        s[~cb.masks[f]] = -1.0  # masked filters go first
        scores[f] = s
    kept = {f: int(m.sum()) for f, m in cb.masks.items()}
    report = cut_to_target(ctx.model, ctx, scores, allocation="global")
    telemetry = {"mask_updates": cb.updates, "mask_flips": cb.changed, "recovered": cb.flips}
    return MethodResult(model=ctx.model, telemetry=telemetry,
                        info={"update_every_steps": update_every, "mask_flips_0_to_1": cb.flips,
                              "kept_per_layer": kept, "epochs_trained": ctx.prune_epochs, **report})
