"""ABCPruner: the number of channels per layer found by an artificial bee colony.

Paper: Mingbao Lin, Rongrong Ji, Yuxin Zhang, Baochang Zhang, Yongjian Wu, Yonghong Tian, "Channel Pruning
via Automatic Structure Search", IJCAI 2020. https://arxiv.org/abs/2001.08565 (reference code, read to
understand: github.com/lmbxmu/ABCPruner, ``bee_cifar.py``, ``utils/options.py``).

ABCPruner searches only *how many* channels each layer keeps, not which: a candidate structure (a "food
source") is one integer per layer, ``c_l`` in 1..max_preserve, meaning keep ``c_l`` tenths of the layer's
channels. A candidate's fitness is the accuracy of the sub-net, filled with randomly chosen channels of the
pre-trained model, after a short training. An artificial bee colony searches the codes: a few random
sources; then every cycle employed bees move each source towards or away from another one on two coordinates
and keep the better, onlooker bees do the same on sources drawn in proportion to their fitness, and a source
that has not improved for ``food_limit`` tries is abandoned for a random one (a scout). The best structure,
with the weights of its fitness training, is fine-tuned.

Here the colony is the search block's :class:`~prunekit.allocate.search.BeeColony` proposer over the segments
of :class:`prunekit.api.Subnets` (channels coupled by a residual sum share one code), every candidate a pruned
copy trained by :class:`~prunekit.train.subnet_eval.FinetuneEvaluator` and scored on held-out training images.
Ours: the paper has no FLOPs constraint (compression comes from ``max_preserve``); here a move or random
source that would exceed the target is drawn again, so every candidate meets it. The target may be
``latency=F`` with ``options={"latency_table": PATH}`` (latency predicted from a per-layer table measured on
this machine, :mod:`prunekit.measure.latency_table`).
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..allocate.search import BeeColony, SearchBudget, run_search
from ..api import Subnets, prune_
from ..data import first_batches, first_examples
from ..train.config import method_train_config
from ..train.search import target_cost
from ..train.subnet_eval import FinetuneEvaluator
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["ABCPrunerConfig", "code_widths", "run"]


@dataclass(frozen=True)
class ABCPrunerConfig(MethodConfig):
    food_number: int = option(10, ge=2)  # food sources (paper's CIFAR/ImageNet runs: 10; code flag default 50)
    max_cycle: int = option(50, ge=0)  # colony cycles (paper's runs: 50; code flag default 1000)
    food_limit: int = option(5, ge=1)  # trials without improvement before a scout replaces a source (code: 5)
    honeychange_num: int = option(2, ge=1)  # code entries a bee changes per move (code: 2)
    max_preserve: int = option(9, ge=1, le=10)  # largest code: keep at most max_preserve tenths (code: 9)
    fitness_epochs: int = option(2, ge=0)  # training epochs per fitness (paper's ImageNet runs: 2; flag: 10)
    fitness_steps: int | None = option(None, ge=0)  # ours: steps per fitness instead of epochs (scaled checks)
    lr: float = option(0.01, gt=0)  # SGD lr of the fitness training (code: 1e-2, momentum 0.9, wd 5e-4)
    momentum: float = option(0.9, ge=0, lt=1)  # code: 0.9
    weight_decay: float = option(5e-4, ge=0)  # code: 5e-4
    rounding: Literal["truncate", "nearest"] = "truncate"  # a moved code made an int: truncate (code: int()),
    # nearest (ours: truncation leans every move towards fewer channels)
    criterion: Literal["random", "l1"] = "random"  # which channels fill a width (code: random_pretrain; l1_pretrain)
    val_images: int = option(2000, ge=1)  # held-out training images scoring a fitness (ours: the code uses the
    # test split, which we never touch)
    evaluations: int | None = option(None, ge=1)  # ours: cap on scored candidates (None: the colony's cycles)
    record: str | None = None  # ours: JSON file keeping every candidate; an existing one is resumed
    latency_table: str | None = None  # ours: the latency table's cache path for a latency= target (measured
    # there on first use, reused after)


def code_widths(widths, code) -> list:
    """Kept channels for a code: ``c`` tenths of each layer, truncated (as the reference code), at least 1."""
    return [max(1, int(w * c / 10)) for w, c in zip(widths, code)]


def _engaged(t: dict) -> bool:
    return t["cycles"] >= 1 and t["best_score"] > t["initial_best"]


@register_method("abcpruner", config=ABCPrunerConfig, kind="structured", needs=("train", "val"),
                 smoke={"food_number": 2, "max_cycle": 1, "fitness_steps": 1, "val_images": 64},
                 telemetry=Telemetry(
                     keys=("evaluated", "initial_best", "best_score", "improvement", "cycles", "scouts",
                           "best_cost", "search_seconds"),
                     engaged=_engaged,
                     what="a bee colony improving on its initial random food sources",
                     knob="raise options.max_cycle (colony cycles) or options.fitness_steps/fitness_epochs, or "
                          "options.evaluations when it caps the colony"))
def run(ctx: RunContext, cfg: ABCPrunerConfig) -> MethodResult:
    model = ctx.model
    subnets = Subnets(model, ctx.example_inputs, criterion=cfg.criterion, ignore=ctx.ignore, seed=ctx.seed)
    space = subnets.space
    _, limit, cost, _ = target_cost(subnets, ctx.target, cfg.latency_table)
    steps = cfg.fitness_steps if cfg.fitness_steps is not None else cfg.fitness_epochs * len(ctx.train_data)
    train_cfg = method_train_config(ctx, 1, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                    progress=False)
    evaluator = FinetuneEvaluator(first_batches(ctx.train_data, steps), first_examples(ctx.val_data, cfg.val_images),
                                  steps=steps, config=train_cfg, device=ctx.device)

    def to_widths(code):
        return space.clip(code_widths(space.widths, code))

    best = {"score": -math.inf, "state": None, "widths": None}

    def fitness(widths) -> float:  # accuracy after the short training of a pruned copy
        sub = subnets.pruned_copy(widths)
        score = evaluator(sub)
        if score > best["score"]:
            best.update(score=score, state=copy.deepcopy(sub.state_dict()), widths=tuple(widths))
        return score

    colony = BeeColony(len(space), to_widths, food_number=cfg.food_number, food_limit=cfg.food_limit,
                       change=cfg.honeychange_num, lo=1, hi=cfg.max_preserve, cycles=cfg.max_cycle,
                       feasible=lambda code: cost(to_widths(code)) <= limit + 1e-12, rounding=cfg.rounding)
    budget = SearchBudget(evaluations=min(colony.max_evaluations(), cfg.evaluations or colony.max_evaluations()))
    record = run_search(space, colony, fitness, cost, limit, budget, seed=ctx.seed, path=cfg.record)
    trials = record.trials
    top = record.best()[0]
    report = prune_(model, subnets.plan(top.widths))
    if best["widths"] == tuple(top.widths):  # hand on the best source with the weights of its fitness training
        model.load_state_dict(best["state"])
    else:  # resumed: the winner was scored in an earlier session, train it as it was trained then
        evaluator(model)
    state = colony.state(trials)
    initial = [t.score for t in trials if t.info.get("phase") == "init"]
    telemetry = {"evaluated": len(trials), "initial_best": float(max(initial)), "best_score": top.score,
                 "improvement": float(top.score - max(initial)), "cycles": int(state["cycle"]),
                 "scouts": int(state["scouts"]), "best_cost": top.cost, "search_seconds": record.seconds}
    best_so_far = np.maximum.accumulate([t.score for t in trials]).tolist()
    info = {"widths": dict(zip(space.names, top.widths)), "dense_widths": dict(zip(space.names, space.widths)),
            "code": top.info.get("code"), "fitness_steps": steps, "best_so_far": best_so_far,
            "phases": [t.info.get("phase") for t in trials], "scores": [t.score for t in trials],
            "costs": [t.cost for t in trials], "engine_report": report.to_dict()}
    log.info("abcpruner: %d candidates in %d cycles, best %.4f (initial best %.4f), %d scouts", len(trials),
             state["cycle"], top.score, max(initial), state["scouts"])
    return MethodResult(model=model, info=info, telemetry=telemetry)
