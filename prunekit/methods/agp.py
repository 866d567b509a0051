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

from dataclasses import dataclass
from functools import partial

from ..errors import ConfigError
from ..masks import sparsify_
from ..schedules import GradualPruning, agp_cubic
from ..train import fit
from ..train.config import method_train_config
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

__all__ = ["AGPConfig", "agp_callback", "run"]


@dataclass(frozen=True)
class AGPConfig(MethodConfig):
    frequency: int = option(100, ge=1)  # Δt in optimizer steps (paper sec. 3: 100-1000 alike)
    ramp: tuple[float, float] = (0.0, 0.6)  # ours: where the ramp starts/ends (t0, t0 + nΔt), fractions of the run
    initial: float = option(0.0, ge=0, lt=1)  # s_i (paper eq. 1: usually 0)
    pattern: str = "element"  # paper: single weights; any registered mask pattern (ours)
    exempt: tuple[str, ...] = ()  # ("first",) / ("last",) keep that layer dense (ours)


def agp_callback(*, final: float, total_steps: int, ramp=(0.0, 0.6), frequency: int = 100, initial: float = 0.0,
                 **sparsify_kwargs):
    """A :class:`~prunekit.schedules.GradualPruning` callback following AGP over ``total_steps`` steps:
    the ramp covers the fraction ``ramp = (begin, end)`` of training with ``frequency`` steps between
    pruning events (shortened when the ramp holds fewer than 2 events). Works in ``fit`` and, through
    the Lightning/HF adapters, in other loops."""
    if not (len(ramp) == 2 and 0 <= ramp[0] < ramp[1] <= 1):
        raise ConfigError(f"ramp={tuple(ramp)!r} must be (begin, end) fractions of training with 0 <= begin < end <= 1")
    start = int(ramp[0] * total_steps)
    length = max(int(ramp[1] * total_steps) - start, 1)
    frequency = max(1, min(int(frequency), length // 2 or 1))
    n = max(1, length // frequency)
    return GradualPruning(partial(agp_cubic, final=final, initial=initial, start=start, n=n, frequency=frequency),
                          **sparsify_kwargs)


@register_method("agp", config=AGPConfig, kind="unstructured", needs=("train",),
                 telemetry=Telemetry(keys=("ramp_steps", "ramp_sparsity"), engaged=lambda t: t["ramp_steps"] >= 2,
                                     what="the gradual cubic ramp (several pruning events during training)",
                                     knob="raise prune_epochs or lower options.frequency: the ramp needs at least "
                                          "two pruning events"))
def run(ctx: RunContext, cfg: AGPConfig) -> MethodResult:
    """Train ``ctx.prune_epochs`` epochs while the sparsity follows the cubic schedule to the target."""
    train = method_train_config(ctx, max(1, ctx.prune_epochs))
    kw = {"ignore": tuple(ctx.ignore), "exempt": cfg.exempt}
    if cfg.pattern != "element":
        kw["pattern"] = cfg.pattern
    cb = agp_callback(final=ctx.target_value, total_steps=train.epochs * len(ctx.train_data), ramp=cfg.ramp,
                      frequency=cfg.frequency, initial=cfg.initial, **kw)
    fit(ctx.model, ctx.train_data, train, callbacks=[cb])
    ramp_sparsity = cb.history[-1][1] if cb.history else 0.0
    report = sparsify_(ctx.model, sparsity=ctx.target_value, **kw)  # exact final sparsity, whatever the grid
    return MethodResult(ctx.model, callbacks=[], info={"events": cb.history, "sparsity": report.sparsity},
                        telemetry={"ramp_steps": len(cb.history), "ramp_sparsity": ramp_sparsity})
