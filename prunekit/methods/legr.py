"""LeGR: one global ranking of filters, made fair across layers by learned per-layer affine transforms.

Paper: Ting-Wu Chin, Ruizhou Ding, Cha Zhang, Diana Marculescu, "Towards Efficient Model Compression via
Learned Global Ranking", CVPR 2020 (oral). https://arxiv.org/abs/1904.12368 (reference code, read to
understand: github.com/enyac-group/LeGR, ``legr.py`` ``learn_ranking_ea``).

A filter's squared L2 norm says something about its importance inside its layer, but norms of different
layers are not on one scale. LeGR gives every layer an affine map ``alpha_l * ||W_i||^2 + kappa_l``, ranks
all filters of the network by the mapped score, and removes the lowest until the FLOPs target is met (each
layer keeps a safeguard fraction of its channels). The maps are learned by regularised (ageing) evolution:
64 random maps (``alpha = exp(N(0, 1))``, ``kappa ~ N(0, std of the layer's scores)``, the identity among
them) form the population; each generation samples 16 of the population, mutates the one with the lowest
fitness loss (10% of the layers get ``alpha *= exp(N(0, step))`` and ``kappa += N(0, std)``, the step
shrinking over the generations), evaluates it, and replaces the oldest member. Fitness: the pruned
network's loss on held-out data after ``tau_hat`` fine-tune steps. The learned maps rank filters for any
target: one search gives the whole accuracy-FLOPs curve.

Here every candidate is a search-block candidate (:mod:`prunekit.allocate.search`; its widths from
:func:`~prunekit.allocate.search.global_ranking_widths` over :class:`prunekit.api.Subnets`' segments), its
maps kept in the record (resumable with ``record``); with ``tau_hat = 0`` the fitness is read on a masked view
of the model (no copy), with ``tau_hat > 0`` on a pruned copy trained ``tau_hat`` steps. ``recal_batches``
(ours, off by default) re-estimates BatchNorm statistics on that many training batches before the fitness
(EagleEye's adaptive BN): at a deep cut with ``tau_hat`` far below the paper's 200 steps, every candidate's
loss on stale statistics is above chance, and the loss then favours sub-nets that predict nearly uniformly
(a narrow last stage) over informative ones.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from ..allocate.search import SearchBudget, global_ranking_widths, run_search
from ..api import Subnets, prune_
from ..data import first_batches, first_examples
from ..errors import ConfigError
from ..train import fit
from ..train.config import method_train_config
from ..train.subnet_eval import SubnetEvaluator
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["LeGRConfig", "transformed_scores", "mutate", "run"]


@dataclass(frozen=True)
class LeGRConfig(MethodConfig):
    population: int = option(64, ge=2)  # regularised-evolution population (reference code: POPULATIONS = 64)
    sample: int = option(16, ge=1)  # tournament size (SAMPLES = 16)
    generations: int = option(400, ge=2)  # candidates evaluated, the population's included (GENERATIONS = 400)
    scale_sigma: float = option(1.0, gt=0)  # std of log(alpha) at initialisation and mutation (SCALE_SIGMA = 1)
    mutate_fraction: float = option(0.1, gt=0, le=1)  # layers perturbed per mutation (MUTATE_PERCENT = 0.1)
    tau_hat: int = option(0, ge=0)  # fine-tune steps before the fitness (reference script default: 0)
    lr: float = option(1e-3, gt=0)  # SGD lr of those steps (reference code: 1e-3, momentum 0.9, wd 5e-4)
    safeguard: float = option(0.1, ge=0, lt=1)  # fraction of each layer's channels always kept (paper / entry:
    # 10%; the reference code's flag defaults to 0)
    val_images: int = option(2000, ge=1)  # held-out training images the fitness loss is read on (ours: the
    # paper uses its validation split)
    record: str | None = None  # ours: JSON file keeping every candidate and its maps; an existing one is resumed
    recal_batches: int = option(0, ge=0)  # ours: training batches re-estimating BatchNorm before the fitness
    # (EagleEye's adaptive BN; 0: the paper's fitness, stale statistics unless tau_hat steps refresh them)


def transformed_scores(base: list, alpha, kappa) -> list:
    """LeGR's comparable scores: ``alpha_l * base_l + kappa_l`` for every layer ``l``."""
    return [a * np.asarray(b, float) + k for b, a, k in zip(base, alpha, kappa)]


def mutate(rng: np.random.Generator, alpha, kappa, stds, fraction: float, sigma: float, step: float):
    """A child of ``(alpha, kappa)``: ``int(fraction * L)`` layers drawn (with replacement, as the reference
    code does) get ``alpha *= exp(N(0, sigma * step))`` and ``kappa += N(0, std_l)``."""
    alpha, kappa = np.array(alpha, float), np.array(kappa, float)
    chosen = set(rng.choice(len(alpha), int(fraction * len(alpha))).tolist())
    for l in sorted(chosen):
        alpha[l] *= math.exp(rng.normal(0.0, sigma * step))
        kappa[l] += rng.normal(0.0, stds[l])
    return alpha, kappa


def _engaged(t: dict) -> bool:
    return t["evolved"] >= 1 and t["best_loss"] < t["identity_loss"]


@register_method("legr", config=LeGRConfig, kind="structured", needs=("train", "val"),
                 smoke={"population": 3, "sample": 2, "generations": 5, "val_images": 64},
                 telemetry=Telemetry(
                     keys=("evaluated", "evolved", "best_loss", "identity_loss", "mean_loss_first",
                           "mean_loss_last", "best_cost", "search_seconds"),
                     engaged=_engaged,
                     what="evolution finding layer maps whose global ranking beats the plain (identity) ranking",
                     knob="raise options.generations (beyond options.population) or options.tau_hat, or give "
                          "more held-out images (options.val_images)"))
def run(ctx: RunContext, cfg: LeGRConfig) -> MethodResult:
    if cfg.sample > cfg.population:
        raise ConfigError(f"method 'legr': sample={cfg.sample} exceeds population={cfg.population}; the "
                          f"tournament samples from the population")
    model = ctx.model
    subnets = Subnets(model, ctx.example_inputs, criterion="l2", ignore=ctx.ignore,
                      max_ratio=1.0 - cfg.safeguard if cfg.safeguard > 0 else None)
    space, kind, limit = subnets.space, ctx.target_kind, ctx.target_value
    base = [s ** 2 for s in subnets.scores]  # squared L2 norms of the filters
    stds = [float(np.std(b)) for b in base]
    val = first_examples(ctx.val_data, cfg.val_images)
    recal = first_batches(ctx.train_data, cfg.recal_batches) if cfg.recal_batches else []
    evaluator = SubnetEvaluator(recal, val, device=ctx.device, adaptive_bn=bool(recal), metric="loss")
    steps = first_batches(ctx.train_data, cfg.tau_hat) if cfg.tau_hat else []

    def cost(widths) -> float:
        return subnets.cost(widths, kind)

    def fitness(widths) -> float:  # minus the held-out loss (higher is better)
        if not steps:
            with subnets.masked(widths) as view:
                return evaluator(view)
        copy = subnets.pruned_copy(widths)
        fit(copy, steps, method_train_config(ctx, 1, lr=cfg.lr, momentum=0.9, weight_decay=5e-4,
                                             scheduler="constant", progress=False))
        return evaluator(copy)

    def widths_of(alpha, kappa):
        return global_ranking_widths(space, transformed_scores(base, alpha, kappa), cost, limit)

    def propose(rng: np.random.Generator, record):
        i = len(record.trials)
        if i < cfg.population - 1:
            alpha = np.exp(rng.normal(0.0, cfg.scale_sigma, len(space)))
            kappa = np.array([rng.normal(0.0, s) for s in stds])
        elif i == cfg.population - 1:
            alpha, kappa = np.ones(len(space)), np.zeros(len(space))
        else:  # ageing evolution: the population is the last `population` candidates
            pop = record.trials[-cfg.population:]
            picked = rng.choice(len(pop), cfg.sample)
            winner = max((pop[j] for j in picked), key=lambda t: t.score)
            step = 1.0 - i / (cfg.generations * 1.25)
            alpha, kappa = mutate(rng, winner.info["alpha"], winner.info["kappa"], stds, cfg.mutate_fraction,
                                  cfg.scale_sigma, step)
        return widths_of(alpha, kappa), {"alpha": [float(a) for a in alpha], "kappa": [float(k) for k in kappa],
                                         "identity": i == cfg.population - 1}

    record = run_search(space, propose, fitness, cost, limit, SearchBudget(evaluations=cfg.generations),
                        seed=ctx.seed, path=cfg.record)
    trials = record.trials
    best = record.best()[0]
    identity = next((t for t in trials if t.info.get("identity")), None)
    report = prune_(model, subnets.plan(best.widths))
    losses = [-t.score for t in trials]
    first, last = losses[:cfg.population], losses[-cfg.population:]
    telemetry = {"evaluated": len(trials), "evolved": max(0, len(trials) - cfg.population),
                 "best_loss": -best.score, "identity_loss": -identity.score if identity else float("nan"),
                 "mean_loss_first": float(np.mean(first)), "mean_loss_last": float(np.mean(last)),
                 "best_cost": best.cost, "search_seconds": record.seconds}
    info = {"alpha": best.info["alpha"], "kappa": best.info["kappa"], "layers": list(space.names),
            "widths": dict(zip(space.names, best.widths)), "dense_widths": dict(zip(space.names, space.widths)),
            "identity_widths": dict(zip(space.names, identity.widths)) if identity else None,
            "losses": losses, "exact_masking": subnets.exact, "engine_report": report.to_dict()}
    log.info("legr: %d candidates, best loss %.4f (identity %.4f)", len(trials), -best.score,
             telemetry["identity_loss"])
    return MethodResult(model=model, info=info, telemetry=telemetry)
