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

from dataclasses import dataclass

from ..errors import ConfigError
from ..masks import sparsify_
from ..schedules import geometric_rounds
from ..train import lr_factor
from ..train.rewind import retrain_lr_rewinding
from ..train.config import method_train_config
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

__all__ = ["LRRewindingConfig", "run"]


@dataclass(frozen=True)
class LRRewindingConfig(MethodConfig):
    rate: float = option(0.2, gt=0, lt=1)  # fraction of the surviving weights removed per round (paper sec. 5: 20%)
    one_shot: bool = False  # True: prune to the target at once, then retrain once (paper's one-shot variant)
    retrain_epochs: int | None = option(None, ge=1)  # t, epochs of each retraining (None: ctx.prune_epochs)
    original_epochs: int | None = option(None, ge=1)  # T, schedule replayed (None: t = T, the paper's recipe)


def _engaged(t: dict) -> bool:
    return t["epochs_replayed"] >= 1 and t["lr_at_rewind"] > t["final_lr"] * (1 + 1e-9)


@register_method("lr-rewinding", config=LRRewindingConfig, kind="unstructured", needs=("train",),
                 telemetry=Telemetry(keys=("rounds", "epochs_replayed", "lr_at_rewind", "final_lr"), engaged=_engaged,
                                     what="replaying a learning rate above the schedule's final one",
                                     knob="give train_config a decaying schedule (step, cosine) and raise "
                                          "options.retrain_epochs: with a flat replayed tail LR rewinding is "
                                          "fine-tuning"))
def run(ctx: RunContext, cfg: LRRewindingConfig) -> MethodResult:
    """Prune a trained ``ctx.model`` by global magnitude; retrain each round replaying the last ``t`` epochs
    of the ``T``-epoch schedule in ``ctx.train_config`` (learning rate, scheduler)."""
    t = cfg.retrain_epochs or max(1, ctx.prune_epochs)
    T = cfg.original_epochs or t
    if t > T:
        raise ConfigError(f"retrain_epochs={t} > original_epochs={T}: learning-rate rewinding replays part of the "
                          f"original schedule; set original_epochs >= retrain_epochs")
    original = method_train_config(ctx, T)
    schedule = [ctx.target_value] if cfg.one_shot else geometric_rounds(ctx.target_value, rate=cfg.rate)
    history = []
    for s in schedule:
        report = sparsify_(ctx.model, sparsity=s, allocation="global", ignore=tuple(ctx.ignore))
        res = retrain_lr_rewinding(ctx.model, ctx.train_data, original, retrain_epochs=t)
        history.append({"sparsity": report.sparsity, "retrain_steps": res.steps})
    n = len(ctx.train_data)
    telemetry = {"rounds": len(history), "epochs_replayed": t * len(history),
                 "lr_at_rewind": original.lr * lr_factor((T - t) * n, T * n, original),
                 "final_lr": original.lr * lr_factor(T * n - 1, T * n, original)}
    return MethodResult(ctx.model, callbacks=[], telemetry=telemetry,
                        info={"rounds": history, "sparsity": history[-1]["sparsity"]})
