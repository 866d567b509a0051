"""DropNet: iteratively drop the filters/nodes with the lowest mean activation, rewind, retrain.

Paper: John Tan Chong Min, Mehul Motani, "DropNet: Reducing Neural Network Complexity via Iterative Pruning",
ICML 2020. https://proceedings.icml.cc/static/paper_files/icml/2020/2026-Paper.pdf

DropNet scores every hidden node or convolutional filter by its average post-activation value over the
training data: a unit that rarely fires contributes little downstream. Pruning is a loop in the style of
the lottery-ticket experiments: train, score, drop a fixed fraction (20%) of the remaining units with the
lowest scores — either ranked over the whole network (``min``) or inside each layer (``min_layer``) — reset
the surviving weights to their initial values, and train again, until the desired size is reached. Here a
dropped unit is held at exactly zero (its producing weights, bias and BatchNorm affine) by the
:class:`~prunekit.methods._regularizers.HardFilterMask` callback, each cycle trains ``ctx.prune_epochs``
epochs with :func:`prunekit.train.fit`, the total number of units to drop is what the engine needs for the
MAC/parameter target with the chosen allocation, the score is the registered ``mean-act`` criterion (the
mean post-ReLU value of the channel where the next layers read it), and the dropped units are removed by the
engine at the end.

The initial values: the model handed to a method is usually trained (every benchmark starts from a trained
baseline), and its own initialisation is gone. With ``init="fresh"`` (default) the method draws the
initialisation the paper resets to before training begins: every module's own initialiser under
``ctx.seed``. ``init="given"`` rewinds to the weights the method received, which is the paper only when the
model passed in is untrained.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch

from ._config import MethodConfig, option
from ._filter_common import (
    _graph, cut_to_target, filter_groups, first_batches, fresh_initialisation, group_scores, removal_counts,
    require_prune_epochs, select_lowest_global,
)
from ..train.config import method_train_config
from ._regularizers import HardFilterMask
from ._registry import MethodResult, RunContext, Telemetry, register_method
from ..train import fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DropNetConfig(MethodConfig):
    fraction: float = option(0.2, gt=0, lt=1)  # share of the remaining units dropped per cycle (code: `percentile`)
    allocation: Literal["min", "min_layer"] = "min"  # min: global ranking | min_layer: per layer (paper sec. 3)
    rewind: bool = True  # reset surviving weights to their initial values after each drop (paper sec. 3)
    init: Literal["fresh", "given"] = "fresh"  # initial values: drawn under ctx.seed | the weights given (ours)
    stat_batches: int = option(16, ge=1)  # training batches for the activation statistics when ctx.calib is None (ours)
    order: Literal["min", "max", "random"] = "min"  # min: DropNet | max, random: the paper's baselines (code)


def select_drop(scores: dict[str, torch.Tensor], keep: dict[str, torch.Tensor], n: int, per_layer: bool,
                order: str = "min", generator: torch.Generator | None = None) -> int:
    """Mask (in ``keep``) ``n`` more units: the lowest scores (``order="min"``), highest, or random.

    ``per_layer`` drops ``n * alive_l / alive`` from each layer instead of ranking globally; every layer keeps
    at least one unit. Returns how many were masked.
    """
    def key_of(s):
        if order == "max":
            return -s
        if order == "random":
            return torch.rand(len(s), generator=generator)
        return s

    keyed = {k: key_of(v.float()) for k, v in scores.items()}
    done = 0
    if per_layer:
        alive_total = sum(int(m.sum()) for m in keep.values())
        for k, s in keyed.items():
            alive = keep[k].nonzero().flatten()
            take = min(round(n * len(alive) / max(alive_total, 1)), len(alive) - 1)
            if take > 0:
                drop = alive[torch.sort(s[alive], stable=True).indices[:take]]
                keep[k][drop] = False
                done += take
        return done
    return select_lowest_global(keyed, keep, n, min_keep=0.0)


def _hard_mask(model, groups, keep) -> HardFilterMask:
    """One mask over every producing tensor of each group (conv/linear weight and bias, BN affine)."""
    mods = dict(model.named_modules())
    mask = HardFilterMask()
    for g in groups:
        for f in g.convs + g.bns:
            for name in ("weight", "bias"):
                t = getattr(mods[f], name, None)
                if t is not None:
                    mask.tensors[f"{f}.{name}"] = (t, keep[g.key])  # shared keep tensor per group
    return mask


@register_method("dropnet", config=DropNetConfig, kind="structured", needs=("train",),
                 telemetry=Telemetry(keys=("cycles", "rewinds", "rewound_to"), engaged=lambda t: t["rewinds"] >= 1,
                                     what="drop-and-rewind to the initial weights",
                                     knob="set options.rewind=true: the paper resets the surviving weights to "
                                          "their initial values after every drop"))
def run(ctx: RunContext, cfg: DropNetConfig) -> MethodResult:
    require_prune_epochs(ctx, "dropnet")
    model = ctx.model
    # the initial values are fixed before any training
    init = (fresh_initialisation(model, ctx.seed) if cfg.init == "fresh"
            else {k: v.detach().clone() for k, v in model.state_dict().items()})
    graph = _graph(model, ctx)
    groups = [g for g in filter_groups(model, ctx, graph) if g.convs]
    batches = ctx.calib if ctx.calib is not None else first_batches(ctx.train_data, cfg.stat_batches)
    per_layer = cfg.allocation == "min_layer"
    keep = {g.key: torch.ones(g.width, dtype=torch.bool) for g in groups}
    mask = _hard_mask(model, groups, keep)

    def scores():
        return group_scores(model, ctx, "mean-act", batches, graph, groups)

    counts = removal_counts(model, ctx, scores(), "uniform" if per_layer else "global")
    total = sum(counts.get(g.key, 0) for g in groups)
    gen = torch.Generator().manual_seed(ctx.seed)
    dropped, cycles, rewinds = 0, 0, 0
    while True:
        fit(model, ctx.train_data, method_train_config(ctx), callbacks=[mask])
        cycles += 1
        if dropped >= total:
            break
        alive = sum(int(m.sum()) for m in keep.values())
        n = min(max(1, math.ceil(cfg.fraction * alive)), total - dropped)
        got = select_drop(scores(), keep, n, per_layer, cfg.order, gen)
        dropped += got
        if got == 0:
            break
        if cfg.rewind:
            model.load_state_dict(init)
            rewinds += 1
        mask.apply()
    final = scores()
    for k in final:
        final[k][~keep[k]] = -1.0  # dropped units go first
    report = cut_to_target(model, ctx, final, allocation="uniform" if per_layer else "global")
    telemetry = {"cycles": cycles, "rewinds": rewinds,
                 "rewound_to": (f"fresh initialisation (seed {ctx.seed})" if cfg.init == "fresh"
                                else "the weights given") if cfg.rewind else "none"}
    info = {"dropped_before_cut": dropped, "epochs_trained": cycles * ctx.prune_epochs, **telemetry, **report}
    return MethodResult(model=model, info=info,
                        telemetry=telemetry)
