"""Automated gradual pruning (AGP).

Paper: "To prune, or not to prune: exploring the efficacy of pruning for model compression", Michael Zhu,
Suyog Gupta. ICLR 2018 workshop. https://arxiv.org/abs/1710.01878

Pruning happens during ordinary training. Every Δt steps each layer's smallest-magnitude weights are
masked until the layer reaches the current target, and the target follows a cubic curve from the initial
to the final sparsity over n pruning steps: it climbs fast while many weights are redundant and slowly as
it nears the end, leaving the network time to recover. Masks only grow, masked weights receive no updates,
every layer gets the same target, and training continues at the final sparsity after the ramp.
"""
from __future__ import annotations

from functools import partial

from ..errors import ConfigError
from ..masks import sparsify_
from ..masks.workflows import method_options, target_sparsity, train_config
from ..schedules import agp_cubic
from ._registry import MethodResult, RunContext, register_method

__all__ = ["agp_callback", "run_agp"]


def agp_callback(*, final: float, total_steps: int, ramp=(0.0, 0.6), frequency: int = 100, initial: float = 0.0,
                 **sparsify_kwargs):
    """A :class:`~prunekit.schedules.GradualPruning` callback following AGP over ``total_steps`` steps:
    the ramp covers the fraction ``ramp = (begin, end)`` of training with ``frequency`` steps between
    pruning events (shortened when the ramp holds fewer than 2 events). Works in ``fit`` and, through
    the Lightning/HF adapters, in other loops."""
    from ..schedules import GradualPruning

    if not (len(ramp) == 2 and 0 <= ramp[0] < ramp[1] <= 1):
        raise ConfigError(f"ramp={tuple(ramp)!r} must be (begin, end) fractions of training with 0 <= begin < end <= 1")
    start = int(ramp[0] * total_steps)
    length = max(int(ramp[1] * total_steps) - start, 1)
    frequency = max(1, min(int(frequency), length // 2 or 1))
    n = max(1, length // frequency)
    return GradualPruning(partial(agp_cubic, final=final, initial=initial, start=start, n=n, frequency=frequency),
                          **sparsify_kwargs)


@register_method("agp", kind="unstructured", needs_data=True, defaults={
    "frequency": 100,  # Δt: optimizer steps between pruning events (paper: 100-1000 made no difference)
    "ramp": (0.0, 0.6),  # fractions of the pruning run where the cubic ramp starts and ends
    "initial": 0.0,  # s_i
    "pattern": "element",
    "exempt": (),
})
def run_agp(ctx: RunContext) -> MethodResult:
    """Train ``ctx.prune_epochs`` epochs while the sparsity follows the cubic schedule to the target."""
    from ..train import fit

    opts = method_options("agp", ctx.options)
    sparsity = target_sparsity(ctx.target, "agp")
    if ctx.train_data is None:
        raise ConfigError("agp prunes during training and needs train_data; pass train_data=")
    cfg = train_config(ctx, max(1, ctx.prune_epochs))
    kw = {"ignore": tuple(ctx.ignore), "exempt": tuple(opts["exempt"])}
    if opts["pattern"] != "element":
        kw["pattern"] = opts["pattern"]
    cb = agp_callback(final=sparsity, total_steps=cfg.epochs * len(ctx.train_data), ramp=tuple(opts["ramp"]),
                      frequency=opts["frequency"], initial=opts["initial"], **kw)
    fit(ctx.model, ctx.train_data, cfg, callbacks=[cb])
    report = sparsify_(ctx.model, sparsity=sparsity, **kw)  # exact final sparsity, whatever the grid
    return MethodResult(ctx.model, callbacks=[], info={"events": cb.history, "sparsity": report.sparsity})
