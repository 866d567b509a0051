"""Learning-rate rewinding.

Paper: "Comparing Rewinding and Fine-tuning in Neural Network Pruning", Alex Renda, Jonathan Frankle,
Michael Carbin. ICLR 2020. https://arxiv.org/abs/2003.02389

After pruning a fully trained network, how should it be retrained? Fine-tuning continues at the final,
small learning rate; weight rewinding resets the weights to an earlier point and replays training from
there. Learning-rate rewinding keeps the final weights but replays the learning-rate schedule of the last
t epochs of the original training, large rates included. It matches or beats weight rewinding and beats
fine-tuning at equal budget; the resulting recipe repeats "remove 20% of the remaining weights by global
magnitude, retrain with learning-rate rewinding" until the target sparsity is reached.
"""
from __future__ import annotations

import math

from ..errors import ConfigError
from ..masks import sparsify_
from ..masks.workflows import method_options, retrain_lr_rewinding, target_sparsity, train_config
from ._registry import MethodResult, RunContext, register_method

__all__ = ["run_lr_rewinding", "rounds_for"]


def rounds_for(sparsity: float, rate: float) -> list[float]:
    """Sparsity after each round removing ``rate`` of the survivors, the last one clipped to ``sparsity``.

    Example:
        >>> [round(s, 3) for s in rounds_for(0.5, 0.2)]
        [0.2, 0.36, 0.488, 0.5]
    """
    if not 0 < rate < 1:
        raise ConfigError(f"rate={rate!r} must be in (0, 1): the fraction of surviving weights removed per round")
    if sparsity <= 0:
        return [0.0]
    n = math.ceil(math.log(1 - sparsity) / math.log(1 - rate) - 1e-9)
    out = [1 - (1 - rate) ** (r + 1) for r in range(n)]
    out[-1] = sparsity
    return out


@register_method("lr-rewinding", kind="unstructured", needs_data=True, defaults={
    "rate": 0.2,  # fraction of the surviving weights removed per round (paper: 20%)
    "one_shot": False,  # True: prune to the target at once, then retrain once
    "retrain_epochs": None,  # t: epochs of each retraining (None: ctx.prune_epochs)
    "original_epochs": None,  # T: length of the original schedule replayed (None: = retrain_epochs)
})
def run_lr_rewinding(ctx: RunContext) -> MethodResult:
    """Prune a trained ``ctx.model`` by global magnitude; retrain each round replaying the last ``t`` epochs
    of the ``T``-epoch schedule in ``ctx.train_config`` (learning rate, scheduler)."""
    opts = method_options("lr-rewinding", ctx.options)
    sparsity = target_sparsity(ctx.target, "lr-rewinding")
    if ctx.train_data is None:
        raise ConfigError("lr-rewinding retrains after each pruning round and needs train_data")
    t = opts["retrain_epochs"] or max(1, ctx.prune_epochs)
    T = opts["original_epochs"] or t
    if t > T:
        raise ConfigError(f"retrain_epochs={t} > original_epochs={T}: learning-rate rewinding replays part of the "
                          f"original schedule; set original_epochs >= retrain_epochs")
    original = train_config(ctx, T)
    schedule = [sparsity] if opts["one_shot"] else rounds_for(sparsity, opts["rate"])
    history = []
    for s in schedule:
        report = sparsify_(ctx.model, sparsity=s, global_=True, ignore=tuple(ctx.ignore))
        retrain_lr_rewinding(ctx.model, ctx.train_data, original, retrain_epochs=t)
        history.append({"sparsity": report.sparsity})
    return MethodResult(ctx.model, callbacks=[], info={"rounds": history, "sparsity": history[-1]["sparsity"]})
