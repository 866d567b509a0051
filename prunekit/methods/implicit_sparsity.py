"""Implicit filter sparsity: train with Adam + L2, then remove the filters that died on their own.

Paper: Dushyant Mehta, Kwang In Kim, Christian Theobalt, "On Implicit Filter Level Sparsity in Convolutional
Neural Networks", CVPR 2019. https://arxiv.org/abs/1811.12495

The paper observes that networks with BatchNorm and ReLU, trained with an adaptive optimiser such as Adam
and an L2 penalty, end up with many filters that never activate on any input, although nothing asked for
sparsity; the effect grows with the penalty and largely disappears with plain SGD. Such a filter's output
after the ReLU is zero everywhere, so it can be deleted without changing the network at all: a free
speed-up. Here the method trains ``ctx.prune_epochs`` epochs with the paper's recipe (Adam, L2 weight
decay; both options), detects dead channels as those whose post-ReLU activation is zero on every
calibration image (or whose BatchNorm ``|gamma|`` is below ``gamma_threshold``), and ranks channels by their
mean post-ReLU activation, dead ones first, for the engine's global cut to the MAC/parameter target. When the
target asks for no more than the dead channels, the cut is lossless on the calibration data.
"""
from __future__ import annotations

import logging

from ._filter_common import (
    check_target_reachable,
    check_choice, check_positive, check_training_context, first_batches, method_options, post_activation_stats,
    restore_on_error, train_config,
)
from ._registry import MethodResult, RunContext, register_method

log = logging.getLogger(__name__)

DEFAULTS = {
    "optimizer": "adam",  # the adaptive optimiser that makes filters die (sgd | adam | adamw)
    "lr": 1e-3,  # Adam learning rate
    "weight_decay": 5e-4,  # L2 strength (the effect grows with it)
    "gamma_threshold": 1e-3,  # |gamma| below this also counts as dead (authors' code: 1e-3)
    "stat_batches": 16,  # training batches used to detect dead channels when ctx.calib is not given
}


def dead_channels(model, ctx: RunContext, gamma_threshold: float = 1e-3, stat_batches: int = 16):
    """``(stats, dead)``: post-ReLU statistics and a dead mask ``{group key: [C] bool}`` per channel group."""
    from ._filter_common import filter_groups

    mods = dict(model.named_modules())
    groups = filter_groups(model, ctx)
    act = {g.key: mods[g.bns[0] if g.bns else g.convs[0]] for g in groups if g.bns or g.convs}
    batches = ctx.calib if ctx.calib is not None else first_batches(ctx.train_data, stat_batches)
    stats = post_activation_stats(model, act, batches, ctx.device)
    dead = {}
    for g in groups:
        if g.key not in stats:
            continue
        d = stats[g.key]["max"] <= 0
        for b in g.bns:
            d = d | (mods[b].weight.detach().abs().cpu() < gamma_threshold)
        dead[g.key] = d
    return stats, dead


@register_method("implicit-sparsity", kind="structured", defaults=DEFAULTS, needs_data=True)
def run(ctx: RunContext) -> MethodResult:
    from ._filter_common import cut_to_target
    from ..train import fit

    opts = method_options("implicit-sparsity", ctx)
    check_choice("optimizer", opts["optimizer"], ("adam", "adamw", "sgd"))
    check_positive(opts, "lr", "stat_batches")
    check_positive(opts, "weight_decay", "gamma_threshold", allow_zero=True)
    check_training_context(ctx, "implicit-sparsity")
    check_target_reachable(ctx.model, ctx)
    ctx.model.to(ctx.device)  # gates, masks and statistics are created on the training device
    cfg = train_config(ctx, optimizer=opts["optimizer"], lr=float(opts["lr"]),
                       weight_decay=float(opts["weight_decay"]))
    with restore_on_error(ctx.model):
        fit(ctx.model, ctx.train_data, cfg)
    stats, dead = dead_channels(ctx.model, ctx, float(opts["gamma_threshold"]), int(opts["stat_batches"]))
    scores = {}
    for key, d in dead.items():
        s = stats[key]["mean"].clone()
        s[d] = -1.0  # dead channels go first
        scores[key] = s
    n_dead = sum(int(d.sum()) for d in dead.values())
    n = sum(len(d) for d in dead.values())
    report = cut_to_target(ctx.model, ctx, scores, allocation="global")
    return MethodResult(model=ctx.model, info={"dead_channels": n_dead, "dead_fraction": n_dead / max(n, 1),
                                               **report})
