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

Here a strategy is a candidate of the shared search block (:mod:`prunekit.allocate.search`) over the model's
prunable segments (:class:`prunekit.api.Subnets`, the segments ``pk.plan`` allocates over); candidates are
scored on a masked view of the model (no copy), the winner is cut physically, and the shared fine-tune
follows. ``record`` keeps every candidate on disk and resumes an interrupted search.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..allocate.search import SearchBudget, random_ratios, run_search, sample_feasible
from ..api import Subnets, prune_
from ..data import first_examples
from ..errors import ConfigError
from ..train.subnet_eval import SubnetEvaluator, recalibrate_bn
from ._config import MethodConfig, option
from ._filter_common import first_batches
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


def max_ratio_for(kept: float) -> float:
    """The paper's R for a target keeping ``kept`` of the FLOPs (0.4 / 0.7 / 0.8 at -25% / -50% / -75%)."""
    if kept >= 0.75 - 1e-9:
        return 0.4
    if kept >= 0.5 - 1e-9:
        return 0.7
    return 0.8


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
    subnets = Subnets(model, ctx.example_inputs, criterion=cfg.criterion, ignore=ctx.ignore)
    space, kind, limit = subnets.space, ctx.target_kind, ctx.target_value
    r_max = cfg.max_ratio if cfg.max_ratio is not None else max_ratio_for(limit)
    recal = first_batches(ctx.train_data, cfg.recal_batches)
    evaluator = SubnetEvaluator(recal, first_examples(ctx.val_data, cfg.val_images), device=ctx.device,
                                adaptive_bn=cfg.recal_batches > 0)

    def cost(widths) -> float:
        return subnets.cost(widths, kind)

    def score(widths) -> float:
        with subnets.masked(widths) as sub:
            return evaluator(sub)

    def propose(rng: np.random.Generator, record):
        widths, n = sample_feasible(space, cost, limit, rng, lambda g: random_ratios(g, len(space), r_max),
                                    window=cfg.window, tries=cfg.max_draws)
        return widths, {"draws": n}

    record = run_search(space, propose, score, cost, limit, SearchBudget(evaluations=cfg.candidates),
                        seed=ctx.seed, path=cfg.record)
    if not record.trials:
        raise ConfigError(f"method 'eagleeye': no strategy with R={r_max} landed within window={cfg.window} of "
                          f"target={ctx.target!r} in {cfg.max_draws:,} draws; raise options.max_ratio (more "
                          f"pruning per layer) or options.window")
    best = record.best(cfg.top_k)
    uniform = subnets.uniform_at(ctx.target)
    uniform_score = score(uniform)
    scores = [t.score for t in record.trials]
    chosen = best[0].widths
    report = prune_(model, subnets.plan(chosen))
    if cfg.recal_batches:  # hand on the sub-net the search scored: its BatchNorm statistics re-estimated
        recalibrate_bn(model, recal, ctx.device)
    telemetry = {"evaluated": len(record.trials), "draws": sum(t.info.get("draws", 0) for t in record.trials),
                 "best_score": best[0].score, "uniform_score": uniform_score,
                 "score_spread": float(max(scores) - min(scores)), "best_cost": best[0].cost, "max_ratio": r_max,
                 "search_seconds": record.seconds}
    info = {"widths": dict(zip(space.names, chosen)), "uniform_widths": dict(zip(space.names, uniform)),
            "dense_widths": dict(zip(space.names, space.widths)),
            "top": [{"index": t.index, "score": t.score, "cost": t.cost} for t in best],
            "scores": scores, "costs": [t.cost for t in record.trials], "exact_masking": subnets.exact,
            "engine_report": report.to_dict()}
    log.info("eagleeye: %d strategies, best %.4f (uniform %.4f) at %.4f of the %s", len(record.trials),
             best[0].score, uniform_score, best[0].cost, kind)
    return MethodResult(model=model, info=info, telemetry=telemetry)
