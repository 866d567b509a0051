"""EagleEye: random layer-wise pruning strategies, ranked by adaptive-BatchNorm accuracy.

Paper: Bailin Li, Bowen Wu, Jiang Su, Guangrun Wang, Liang Lin, "EagleEye: Fast Sub-net Evaluation for
Efficient Neural Network Pruning", ECCV 2020 (oral). https://arxiv.org/abs/2007.02491 (reference code, read
to understand: github.com/anonymous47823493/EagleEye, ``search.py``, ``choose_strategy.py``).

The paper's observation: a pruned sub-network evaluated with the dense network's BatchNorm statistics says
little about how it will do once fine-tuned, because those statistics no longer fit; re-estimating them on a
few training batches (no gradient, a few dozen forwards) gives a score that tracks the fine-tuned accuracy.
That makes a plain random search affordable: draw a pruning ratio per layer (channels coupled by a residual
sum share one) from U(0, R), remove each layer's filters of smallest L1 norm, keep only strategies whose
FLOPs are within 0.5% of the target, score each by adaptive-BN accuracy on a held-out part of the training
data, and fine-tune the best one (its BatchNorm statistics re-estimated as when it was scored).

Here the search is the shared verb :func:`prunekit.search` (the candidates of :class:`prunekit.api.Subnets`
scored on a masked view of the model, no copy); the winner is cut physically and the shared fine-tune
follows. ``record`` keeps every candidate on disk and resumes an interrupted search. The target may be
``latency=F`` with ``options={"latency_table": PATH}`` (see :func:`prunekit.search`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from ..api import prune_
from ..data import first_batches
from ..train.search import max_ratio_for, search
from ..train.subnet_eval import recalibrate_bn
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["EagleEyeConfig", "max_ratio_for", "run"]


@dataclass(frozen=True)
class EagleEyeConfig(MethodConfig):
    candidates: int = option(1000, ge=1)  # strategies scored (the repo's search output indexes strategies up to
    # ~1000; the exact count is not stated in the paper)
    max_ratio: float | None = option(None, gt=0, lt=1)  # R of r_l ~ U(0, R); None: the paper's R for the target
    # (sec. 4 / compress configs: 0.4 at -25% FLOPs, 0.7 at -50%, 0.8 at -75%)
    window: float = option(0.005, ge=0, lt=1)  # keep strategies within this much of the target (paper: +-0.5%
    # of FLOPs; here at most the target and at least target - window)
    recal_batches: int = option(50, ge=0)  # training batches re-estimating BN per candidate (entry: ~50-100
    # forwards; 0 = the paper's "vanilla evaluation" ablation)
    val_images: int = option(2000, ge=1)  # held-out training images each candidate is scored on (ours: the
    # paper scores on a part of the training set; the count is not given)
    criterion: Literal["l1", "l2"] = "l1"  # filter criterion inside a layer (paper: L1 norm)
    top_k: int = option(5, ge=1)  # strategies reported (the repo prints the top 5 and fine-tunes the top 1)
    max_draws: int = option(100_000, ge=1)  # ours: draws per candidate before the search gives up
    record: str | None = None  # ours: JSON file keeping every candidate; an existing one is resumed
    latency_table: str | None = None  # ours: the latency table's cache path for a latency= target (measured
    # there on first use, reused after)


def _engaged(t: dict) -> bool:
    return t["evaluated"] >= 2 and t["score_spread"] > 0.0


@register_method("eagleeye", config=EagleEyeConfig, kind="structured", needs=("train", "val"),
                 smoke={"candidates": 3, "recal_batches": 2, "val_images": 64, "window": 0.05},
                 telemetry=Telemetry(
                     keys=("evaluated", "draws", "best_score", "uniform_score", "score_spread", "best_cost",
                           "max_ratio", "search_seconds"),
                     engaged=_engaged,
                     what="a random search that told candidates apart by adaptive-BN accuracy",
                     knob="raise options.candidates (strategies scored) or options.recal_batches, or widen "
                          "options.window when few strategies land near the target"))
def run(ctx: RunContext, cfg: EagleEyeConfig) -> MethodResult:
    model = ctx.model
    found = search(model, ctx.example_inputs, ctx.target, train=ctx.train_data, val=ctx.val_data,
                   candidates=cfg.candidates, max_ratio=cfg.max_ratio, window=cfg.window,
                   recal_batches=cfg.recal_batches, val_images=cfg.val_images, criterion=cfg.criterion,
                   ignore=ctx.ignore, seed=ctx.seed, device=ctx.device, record=cfg.record, max_draws=cfg.max_draws,
                   latency_table=cfg.latency_table)
    rec = found.record
    report = prune_(model, found.plan)
    if cfg.recal_batches:  # hand on the sub-net the search scored: its BatchNorm statistics re-estimated
        recalibrate_bn(model, first_batches(ctx.train_data, cfg.recal_batches), ctx.device)
    scores = [t.score for t in rec.trials]
    telemetry = {"evaluated": len(rec.trials), "draws": sum(t.info.get("draws", 0) for t in rec.trials),
                 "best_score": found.best.score, "uniform_score": found.uniform_score,
                 "score_spread": float(max(scores) - min(scores)), "best_cost": found.best.cost,
                 "max_ratio": found.max_ratio, "search_seconds": rec.seconds}
    info = {"widths": found.widths, "uniform_widths": found.uniform_widths,
            "dense_widths": dict(zip(found.subnets.space.names, found.subnets.space.widths)),
            "top": [{"index": t.index, "score": t.score, "cost": t.cost} for t in rec.best(cfg.top_k)],
            "scores": scores, "costs": [t.cost for t in rec.trials], "exact_masking": found.subnets.exact,
            "engine_report": report.to_dict()}
    log.info("eagleeye: %d strategies, best %.4f (uniform %.4f) at %.4f of the %s", len(rec.trials),
             found.best.score, found.uniform_score, found.best.cost, found.kind)
    return MethodResult(model=model, info=info, telemetry=telemetry)
