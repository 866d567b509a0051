"""Taylor-FO: squared first-order Taylor importance of a gate after each BatchNorm, removed globally in rounds.

Paper: Pavlo Molchanov, Arun Mallya, Stephen Tyree, Iuri Frosio, Jan Kautz, "Importance Estimation for
Neural Network Pruning", CVPR 2019. https://arxiv.org/abs/1906.10771

The paper estimates how much the loss would change if a unit were removed by the square of its
first-order Taylor term. Its best variant places a gate (a constant 1) after each BatchNorm: the unit's
importance is ``(g * dL/dg)^2``, which equals ``(gamma dL/dgamma + beta dL/dbeta)^2``, squared on each
mini-batch and averaged over mini-batches. The scores are ranked over the whole network as they are (no
per-layer normalisation); every 30 minibatches of continued training the 100 lowest units are removed, up
to 32 times, and the network is fine-tuned afterwards. Here each round scores the calibration batches
(:func:`prunekit.criteria.taylor.taylor_fo_scores`; a layer without BatchNorm is gated at its output, so
its term is the filter's ``sum w dL/dw``), cuts the globally lowest channels through the engine and trains
``steps_between`` minibatches through ``fit`` (:func:`prunekit.train.rounds.prune_in_rounds`); the last
round lands on the MAC/parameter target.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..criteria.taylor import taylor_fo_scores
from ..train.rounds import prune_in_rounds_with
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method
from ._telemetry import ROUNDS_TELEMETRY


@dataclass(frozen=True)
class TaylorFOConfig(MethodConfig):
    per_round: int = option(100, ge=1)  # units removed per round (sec. 4, ImageNet: 100); more if max_rounds binds
    max_rounds: int = option(32, ge=1)  # rounds at most (sec. 4: up to 32)
    steps_between: int = option(30, ge=0)  # minibatches trained after each cut (sec. 4: every 30 minibatches)
    lr: float = option(1e-3, gt=0)  # SGD lr of those steps (NVlabs/Taylor_pruning config: 1e-3, no decay)
    criterion: Literal["taylor", "l2", "l1", "random"] = "taylor"  # taylor: the paper's gate score; others: the
    # entry's same-schedule baselines (engine criterion, members mean-normalised) -- ours


@register_method("taylor-fo", config=TaylorFOConfig, kind="structured", needs=("calib", "train"), telemetry=Telemetry(
    what="training between the rounds that each remove per_round units", **ROUNDS_TELEMETRY))
def run(ctx: RunContext, cfg: TaylorFOConfig) -> MethodResult:
    info, telemetry = prune_in_rounds_with(ctx, cfg, taylor_fo_scores, "taylor")
    return MethodResult(model=ctx.model, info=info, telemetry=telemetry)
