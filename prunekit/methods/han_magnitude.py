"""Magnitude pruning with retraining (Han et al.).

Paper: "Learning both Weights and Connections for Efficient Neural Networks", Song Han, Jeff Pool, John
Tran, William J. Dally. NeurIPS 2015. https://arxiv.org/abs/1506.02626

Train the dense network, then remove every connection whose weight is small compared with the spread of
its layer: the cut-off of a layer is a quality parameter times the standard deviation of that layer's
weights, so layers with widely spread weights lose more of them. The surviving weights are retrained with
the pruned ones held at zero (keeping, not re-initialising, the survivors), and the prune → retrain cycle
repeats to reach high compression. Here one quality parameter is shared by all layers and chosen so the
whole model reaches the requested sparsity of each round, and the sparsity grows geometrically over the
rounds (:func:`prunekit.train.rewind.iterative_prune` with ``threshold="std"``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigError
from ..train.rewind import iterative_prune, std_threshold_mask
from ..train.config import method_train_config
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

__all__ = ["HanMagnitudeConfig", "run", "std_threshold_mask"]


@dataclass(frozen=True)
class HanMagnitudeConfig(MethodConfig):
    rounds: int = option(3, ge=1)  # prune -> retrain cycles (paper sec. 3.3: iterative; AlexNet used several)
    retrain_epochs: int = option(1, ge=0)  # masked retraining between rounds (ours: budget; caller fine-tunes after)
    retrain_lr_factor: float = option(0.1, gt=0, le=1)  # paper sec. 3.3: retrain at 1/10 .. 1/100 of the original lr
    threshold: Literal["std", "uniform"] = "std"  # paper sec. 3: |w| < q*std(layer); uniform: ours
    overrides: dict = field(default_factory=dict)  # {layer fqn: sparsity} for single layers (ours; uniform only)
    exempt: tuple[str, ...] = ()  # ("first",) / ("last",) keep that layer dense (ours)


def _engaged(t: dict) -> bool:
    return t["retrain_rounds"] >= 1 and any(v > 0 for v in t["layer_pruned"].values())


@register_method(
    "han-magnitude", config=HanMagnitudeConfig, kind="unstructured", needs=("train",), status="partial",
    left_out="neurons left with no inputs or outputs are not removed (no structural step); dropout rescaling "
             "during retraining is not applied; per-layer quality parameters from a sensitivity sweep are "
             "replaced by one shared parameter set by the target sparsity (override per layer with 'overrides')",
    telemetry=Telemetry(keys=("layer_pruned", "quality", "retrain_rounds"), engaged=_engaged,
                        what="prune -> masked retrain cycles with the std threshold",
                        knob="raise options.rounds (>= 2) and options.retrain_epochs (>= 1): Han et al. retrain "
                             "between prune rounds"))
def run(ctx: RunContext, cfg: HanMagnitudeConfig) -> MethodResult:
    """Iterative magnitude pruning with per-layer std thresholds and masked retraining between rounds."""
    if cfg.threshold == "std" and cfg.overrides:
        raise ConfigError(f"overrides={cfg.overrides!r} need threshold='uniform' (the std rule sets every layer "
                          f"from one q)")
    base = method_train_config(ctx, max(1, cfg.retrain_epochs))
    train = base.replace(lr=base.lr * cfg.retrain_lr_factor)
    data = ctx.train_data if cfg.retrain_epochs else None
    kw = {"sparsity": ctx.target_value, "rounds": cfg.rounds, "ignore": tuple(ctx.ignore), "exempt": cfg.exempt}
    if cfg.threshold == "std":
        history = iterative_prune(ctx.model, data, train, threshold="std", **kw)
    else:
        history = iterative_prune(ctx.model, data, train, overrides=dict(cfg.overrides), **kw)
    telemetry = {"layer_pruned": history[-1]["layers"], "quality": history[-1].get("quality"),
                 "retrain_rounds": sum(1 for h in history if h["retrain_steps"] > 0)}
    return MethodResult(ctx.model, callbacks=[], info={"rounds": history, "sparsity": history[-1]["sparsity"]},
                        telemetry=telemetry)
