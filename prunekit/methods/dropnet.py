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
MAC/parameter target with the chosen allocation, the post-activation is ``relu`` of the channel's BatchNorm
(or of its conv/linear output when there is none), and the dropped units are removed by the engine at the end.
"""
from __future__ import annotations

import logging
import math

import torch

from ..errors import ConfigError
from ._filter_common import (
    check_target_reachable,
    check_choice, check_positive, check_training_context, first_batches, method_options, post_activation_stats,
    restore_on_error, select_lowest_global, train_config,
)
from ._regularizers import HardFilterMask
from ._registry import MethodResult, RunContext, register_method

log = logging.getLogger(__name__)

DEFAULTS = {
    "fraction": 0.2,  # share of the remaining units dropped per cycle (the paper's `percentile`)
    "allocation": "min",  # min: global ranking | min_layer: the same share in every layer
    "rewind": True,  # reset surviving weights to their initial values after each drop
    "stat_batches": 16,  # training batches for the activation statistics when ctx.calib is not given
    "order": "min",  # min: drop lowest activations (DropNet) | max: drop highest | random (baselines)
}


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


@register_method("dropnet", kind="structured", defaults=DEFAULTS, needs_data=True)
def run(ctx: RunContext) -> MethodResult:
    from ._filter_common import cut_to_target, filter_groups, removal_counts
    from ..train import fit

    opts = method_options("dropnet", ctx)
    check_positive(opts, "fraction", "stat_batches")
    check_choice("allocation", opts["allocation"], ("min", "min_layer"))
    check_choice("order", opts["order"], ("min", "max", "random"))
    if not opts["fraction"] < 1:
        raise ConfigError(f"options['fraction']={opts['fraction']!r} is the share of the remaining units dropped "
                          f"per cycle and must be in (0, 1); the paper uses 0.2")
    check_training_context(ctx, "dropnet")
    check_target_reachable(ctx.model, ctx)
    ctx.model.to(ctx.device)  # gates, masks and statistics are created on the training device
    model = ctx.model
    mods = dict(model.named_modules())
    groups = [g for g in filter_groups(model, ctx) if g.convs]
    act = {g.key: mods[g.bns[0] if g.bns else g.convs[0]] for g in groups}
    batches = ctx.calib if ctx.calib is not None else first_batches(ctx.train_data, int(opts["stat_batches"]))
    per_layer = opts["allocation"] == "min_layer"
    keep = {g.key: torch.ones(g.width, dtype=torch.bool) for g in groups}
    mask = HardFilterMask()
    for g in groups:
        for f in g.convs + g.bns:
            for name in ("weight", "bias"):
                t = getattr(mods[f], name, None)
                if t is not None:
                    mask.tensors[f"{f}.{name}"] = (t, keep[g.key])  # shared keep tensor per group
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    stats = post_activation_stats(model, act, batches, ctx.device)
    counts = removal_counts(model, ctx, {k: stats[k]["mean"] for k in act},
                            "uniform" if per_layer else "global")
    total = sum(counts.get(g.key, 0) for g in groups)
    gen = torch.Generator().manual_seed(ctx.seed)
    dropped, cycles = 0, 0
    with restore_on_error(model):
        while True:
            fit(model, ctx.train_data, train_config(ctx), callbacks=[mask])
            cycles += 1
            if dropped >= total:
                break
            stats = post_activation_stats(model, act, batches, ctx.device)
            alive = sum(int(m.sum()) for m in keep.values())
            n = min(max(1, math.ceil(float(opts["fraction"]) * alive)), total - dropped)
            got = select_drop({k: stats[k]["mean"] for k in act}, keep, n, per_layer, opts["order"], gen)
            dropped += got
            if got == 0:
                break
            if opts["rewind"]:
                model.load_state_dict(init)
            mask.apply()
    stats = post_activation_stats(model, act, batches, ctx.device)
    scores = {}
    for k in act:
        s = stats[k]["mean"].clone()
        s[~keep[k]] = -1.0  # dropped units go first
        scores[k] = s
    report = cut_to_target(model, ctx, scores, allocation="uniform" if per_layer else "global")
    return MethodResult(model=model, info={"cycles": cycles, "dropped_before_cut": dropped, **report})
