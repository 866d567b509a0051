"""Taylor-FM: remove the feature map with the smallest first-order Taylor score, fine-tune, repeat.

Paper: Pavlo Molchanov, Stephen Tyree, Tero Karras, Timo Aila, Jan Kautz, "Pruning Convolutional Neural
Networks for Resource Efficient Inference", ICLR 2017. https://arxiv.org/abs/1611.06440

The paper approximates the loss change caused by zeroing a feature map by the first-order Taylor term
``|(1/M) sum_m a_m dL/da_m|`` over the map's M positions, computed for each example and averaged over the
minibatch; each layer's scores are scaled to unit l2 norm so that all layers can be ranked together. It
prunes greedily: remove the globally weakest map, fine-tune a few minibatches, and repeat until the budget
is met. Here each round scores the feature maps as the next layer reads them, from the calibration batches
(:func:`prunekit.criteria.taylor.taylor_fm_scores`), removes ``per_round`` maps (1, as in the paper, unless
``max_rounds`` rounds would not reach the target) through the engine and trains ``steps_between``
minibatches through ``fit`` (:func:`prunekit.train.rounds.prune_in_rounds`); the last round lands on the
MAC/parameter target.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..criteria.taylor import taylor_fm_scores
from ..train.rounds import prune_in_rounds_with
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method
from ._telemetry import ROUNDS_TELEMETRY


@dataclass(frozen=True)
class TaylorFMConfig(MethodConfig):
    per_round: int = option(1, ge=1)  # feature maps removed per round (sec. 2: one map, then fine-tune)
    max_rounds: int = option(64, ge=1)  # cap on rounds; per_round grows when the target needs more -- ours
    steps_between: int = option(20, ge=0)  # minibatches of fine-tuning after each cut (entry's check: 20)
    lr: float = option(1e-3, gt=0)  # SGD lr of those steps -- ours (the paper fine-tunes at its training lr)
    criterion: Literal["taylor-act", "l1", "l2", "random"] = "taylor-act"  # taylor-act: the paper's score; others:
    # the entry's same-schedule baselines (engine criterion, members mean-normalised) -- ours


@register_method("taylor-fm", config=TaylorFMConfig, kind="structured", needs=("calib", "train"),
                 smoke={"per_round": 16, "steps_between": 2}, telemetry=Telemetry(
    what="fine-tuning between the rounds that each remove per_round maps", **ROUNDS_TELEMETRY))
def run(ctx: RunContext, cfg: TaylorFMConfig) -> MethodResult:
    info, telemetry = prune_in_rounds_with(ctx, cfg, taylor_fm_scores, "taylor-act")
    return MethodResult(model=ctx.model, info=info, telemetry=telemetry)
