"""``pk.search``: find per-layer widths for a target by scoring sub-networks, without changing the model.

The verb behind ``prunekit search`` and the search methods: it builds the candidates of
:class:`prunekit.api.Subnets` (the model's prunable segments, filters ranked by ``criterion``), proposes
strategies (``sampler="random"``: EagleEye's pruning ratio per segment from U(0, R), kept only within
``window`` below the target), scores each on a masked view with :class:`SubnetEvaluator` (adaptive BN on
``train`` batches, accuracy on ``val`` held-out training batches), and returns the record of every candidate,
the best widths, the widths of the uniform allocation of the same criterion at the same target, and the plan
that cuts the model to the best widths (``pk.prune_(model, result.plan)``).

``target="latency=0.5"`` (or ``"latency=3ms"``) constrains the latency predicted from a per-layer table
measured on this machine (:mod:`prunekit.measure.latency_table`, ``latency_table=`` a cache path or a table)
instead of MACs or parameters.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from torch import nn

from ..allocate import parse_target
from ..allocate.search import (SearchBudget, SearchRecord, Trial, random_ratios, run_search, sample_feasible,
                               uniform_within)
from ..api import Plan, Subnets
from ..data import first_batches, first_examples
from ..errors import ConfigError
from ..measure.latency_table import LatencyModel, LatencyTable, parse_latency_target
from .executor import make_executor
from .subnet_eval import SubnetEvaluator

__all__ = ["search", "SearchResult", "max_ratio_for", "SAMPLERS", "target_cost"]

log = logging.getLogger(__name__)

SAMPLERS = ("random",)
_WIDER_R = (0.7, 0.8, 0.9, 0.95)  # ours: the R tried in turn for a latency target (see search)


def max_ratio_for(kept: float) -> float:
    """EagleEye's R for a target keeping ``kept`` of the FLOPs (0.4 / 0.7 / 0.8 at -25% / -50% / -75%)."""
    if kept >= 0.75 - 1e-9:
        return 0.4
    if kept >= 0.5 - 1e-9:
        return 0.7
    return 0.8


@dataclass
class SearchResult:
    """What :func:`search` found: ``record`` (every candidate), ``widths`` (the best, per segment name),
    ``uniform_widths`` (the same criterion allocated uniformly at the target), ``uniform_score``, ``plan``
    (cuts the model to ``widths``), ``subnets`` (for further views), ``kind``/``limit`` of the target."""

    record: SearchRecord
    best: Trial
    widths: dict
    uniform_widths: dict
    uniform_score: float
    plan: Plan
    subnets: Subnets
    kind: str
    limit: float
    max_ratio: float
    latency: LatencyModel | None = None  # the cost model of a latency= target
    checks: list = field(default_factory=list)  # a latency target's measured checks (see search)

    def cost(self, widths) -> float:
        """A candidate's cost in the target's kind (the kept fraction of MACs, params or predicted latency)."""
        return self.latency.cost(widths) if self.latency is not None else self.subnets.cost(widths, self.kind)

    def as_dict(self) -> dict:
        return {"target": f"{self.kind}={self.limit}", "max_ratio": self.max_ratio, "best": {
                    "index": self.best.index, "score": self.best.score, "cost": self.best.cost},
                "widths": self.widths, "uniform_widths": self.uniform_widths, "uniform_score": self.uniform_score,
                "dense_widths": dict(zip(self.subnets.space.names, self.subnets.space.widths)),
                "exact_masking": self.subnets.exact, "record": self.record.as_dict(),
                **({"latency_dense_ms": self.latency.dense_ms, "latency_checks": self.checks}
                   if self.latency is not None else {})}


def target_cost(subnets: Subnets, target: str, latency_table=None, backend: str | None = None, *,
                clock: str | None = None, statistic: str | None = None) -> tuple:
    """``(kind, limit, cost, latency model or None)`` of a ``macs=``/``params=``/``sparsity=``/``latency=``
    target over ``subnets``' candidates; a latency target measures (or loads and continues) the table at
    ``latency_table`` (a path or a :class:`LatencyTable`) and is refused without one. ``backend``: the table's
    ``"torch"`` or ``"onnxruntime"``; ``clock``: ``"wall"`` or ``"cpu"`` (the thread's CPU time: steady on a
    machine whose cores other processes share); ``statistic``: ``"median"`` or ``"p10"``. None: the setting of
    the file at that path, else torch / wall / median."""
    if parse_latency_target(target) is None:
        kind, limit = parse_target(target)  # sparsity=s is params=1-s
        return kind, limit, (lambda widths: subnets.cost(widths, kind)), None
    if latency_table is None:
        raise ConfigError(f"target={target!r} needs a latency table measured on this machine: pass "
                          f"latency_table=PATH (measured there on first use, resumable, reused after) or a "
                          f"LatencyTable; or give a macs=/params= target")
    if isinstance(latency_table, LatencyTable):
        table = latency_table
    else:
        saved = LatencyTable.setting_of(latency_table)
        table = LatencyTable.build(subnets.model, subnets.example_inputs, latency_table,
                                   backend=backend or saved.get("backend") or "torch",
                                   clock=clock or saved.get("clock") or "wall",
                                   statistic=statistic or saved.get("statistic") or "median")
    lat = LatencyModel(subnets, table)
    return "latency", lat.limit_for(target), lat.cost, lat


def search(model: nn.Module, example_inputs, target: str, *, train, val, candidates: int = 30,
           seconds: float | None = None, sampler: str = "random", max_ratio: float | None = None,
           window: float = 0.005, recal_batches: int = 50, val_images: int | None = None, criterion: str = "l1",
           ignore=(), round_to: int = 1, min_channels: int = 1, seed: int = 0, device: str = "cpu",
           record: str | None = None, max_draws: int = 100_000,
           on_trial: Callable[[Trial], None] | None = None, latency_table=None,
           latency_backend: str | None = None, latency_clock: str | None = None,
           latency_statistic: str | None = None, latency_checks: int = 2, executor: str = "local",
           address: str | None = None, workers: int = 2) -> SearchResult:
    """Search per-layer widths meeting ``target`` (``macs=``/``params=``/``latency=`` kept fraction, or
    ``latency=Xms``); the model is unchanged.

    ``train``/``val``: iterables of ``(inputs, targets)`` batches (``val`` held out of the training data,
    never the test split); ``candidates``/``seconds``: the budget; ``recal_batches``: training batches
    re-estimating BatchNorm per candidate (0: the stale statistics); ``record``: a JSON file keeping every
    candidate, resumed when it exists; ``on_trial``: called after each evaluation (a progress bar);
    ``latency_table``: for a ``latency=`` target, the table's cache path (measured there when missing) or a
    :class:`~prunekit.measure.latency_table.LatencyTable`; ``latency_backend``: ``"torch"`` or ``"onnxruntime"``
    for a table measured there, ``latency_clock`` ``"wall"`` or ``"cpu"`` and ``latency_statistic`` ``"median"``
    or ``"p10"`` its timer (None: an existing file's setting, else torch / wall / median). ``max_ratio=None``: EagleEye's R for the target's
    kept fraction; for a latency target (latency falls slower than FLOPs) the first R of 0.4/0.7/0.8/0.9/0.95
    from that one on whose average draw meets the target. A target that no draw at ``max_ratio`` can reach is
    refused before any candidate is scored. ``latency_checks`` (ours; latency targets only): rounds of a
    measured check: the chosen candidate is cut and timed against the dense model; when it misses the target,
    the table's limit is lowered by the miss (limit × target / measured), the best candidate already scored
    under it is taken, or ``candidates`` more are drawn there, and the new choice is timed again. Every check is
    in ``result.checks``; 0 trusts the table. ``executor="ray"``: the candidates are drawn here (the same ones,
    in the same order, as the local run) and scored as Ray tasks, ``workers`` chunks of them, on a local Ray
    instance of ``workers`` CPUs or the cluster at ``address`` (:mod:`prunekit.train.executor`); every score
    equals the local run's. A record being written holds the drawn candidates unscored (NaN) until their
    tasks end, and a resumed search scores what is left.

    Example:
        >>> import torch, prunekit as pk
        >>> from prunekit.testing import models
        >>> m, x = models()["residual"]()
        >>> batches = [(torch.randn(4, *x.shape[1:]), torch.randint(0, 2, (4,))) for _ in range(2)]
        >>> r = pk.search(m, x, "macs=0.6", train=batches, val=batches, candidates=3, recal_batches=1, window=0.2)
        >>> len(r.record.trials), r.best.cost <= 0.6
        (3, True)
    """
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler={sampler!r} is not valid; choose one of {', '.join(map(repr, SAMPLERS))}")
    if parse_latency_target(target) is None:
        parse_target(target)  # a bad target is refused before the model is traced
    if max_ratio is not None and not 0 < max_ratio < 1:
        raise ConfigError(f"max_ratio={max_ratio!r} must be in (0, 1): the largest ratio a layer is drawn at")
    if not 0 <= window < 1:
        raise ConfigError(f"window={window!r} must be in [0, 1): how far below the target a candidate may land")
    if not isinstance(latency_checks, int) or isinstance(latency_checks, bool) or latency_checks < 0:
        raise ConfigError(f"latency_checks={latency_checks!r} must be an int >= 0 (0 trusts the latency table)")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"workers={workers!r} must be a positive int (the chunks of candidates scored at once)")
    ex = make_executor(executor, address=address, num_cpus=workers if executor == "ray" and address is None else
                       None)
    if executor == "ray" and seconds is not None:
        raise ConfigError("seconds= budgets a search that scores as it draws; with executor='ray' give "
                          "candidates= instead")
    budget = SearchBudget(evaluations=candidates if seconds is None else None, seconds=seconds)
    subnets = Subnets(model, example_inputs, criterion=criterion, ignore=ignore, round_to=round_to,
                      min_channels=min_channels)
    space = subnets.space
    kind, limit, cost, lat = target_cost(subnets, target, latency_table, latency_backend, clock=latency_clock,
                                         statistic=latency_statistic)
    r_max = max_ratio if max_ratio is not None else max_ratio_for(limit)

    def uniform_cost(r: float) -> float:  # every segment pruned at ratio r
        return cost(space.from_ratios([r] * len(space)))

    if max_ratio is None and lat is not None:
        # ours: EagleEye's R is set for FLOPs, and latency falls slower than FLOPs as channels go; the first R
        # whose average draw (every ratio R/2) meets the target, else the widest whose deepest draw does
        ladder = [r_max] + [r for r in _WIDER_R if r > r_max]
        fits = [r for r in ladder if uniform_cost(r / 2) <= limit + 1e-12]
        r_max = fits[0] if fits else ladder[-1]
    deepest = uniform_cost(r_max)  # the cheapest candidate a draw at ratios <= r_max can give
    if deepest > limit + 1e-12:
        raise ConfigError(f"target={target!r} cannot be reached with max_ratio={r_max}: every segment pruned at "
                          f"that ratio still costs {deepest:.4f} of the dense {kind} (limit {limit:.4f}); raise "
                          f"max_ratio (below 1) or ask for a larger fraction kept")
    recal = first_batches(train, recal_batches)
    val_batches = list(val) if val_images is None else first_examples(val, val_images)
    evaluator = SubnetEvaluator(recal, val_batches, device=device, adaptive_bn=recal_batches > 0)

    def score(widths) -> float:
        with subnets.masked(widths) as sub:
            return evaluator(sub)

    def propose(rng: np.random.Generator, _record):
        widths, n = sample_feasible(space, cost, limit, rng, lambda g: random_ratios(g, len(space), r_max),
                                    window=window, tries=max_draws)
        return widths, {"draws": n}

    if executor == "local":
        rec = run_search(space, propose, score, cost, limit, budget, seed=seed, path=record, on_trial=on_trial)
    else:  # draw here as the local run does (the random proposer never reads a score), score as tasks
        rec = run_search(space, propose, lambda widths: math.nan, cost, limit, budget, seed=seed, path=record)
        _score_as_tasks(rec, ex, workers, model, example_inputs, dict(criterion=criterion, ignore=ignore,
                        round_to=round_to, min_channels=min_channels), recal, val_batches, device,
                        recal_batches > 0, record, on_trial)
    if not rec.trials:
        raise ConfigError(f"no strategy with max_ratio={r_max} landed within window={window} below "
                          f"target={target!r} in {max_draws:,} draws; raise max_ratio (more pruning per layer) or "
                          f"window")
    best = rec.best()[0]
    checks = []
    if lat is not None and latency_checks:
        best, checks = _measured_checks(rec, best, lat, limit, latency_checks, window, max_draws, r_max, space, cost,
                                        score, budget, seed)
    uniform = subnets.uniform_at(target) if lat is None else uniform_within(space, cost, limit)
    return SearchResult(rec, best, dict(zip(space.names, best.widths)), dict(zip(space.names, uniform)),
                        score(uniform), subnets.plan(best.widths), subnets, kind, limit, r_max, lat, checks)


def _score_chunk(model: nn.Module, example_inputs, subnets_kw: dict, recal: list, val: list, device: str,
                 adaptive_bn: bool, candidates: list) -> list:
    """Scores of ``candidates`` (widths), each as :func:`search` scores it locally: the masked view of the
    model, BatchNorm recalibrated, accuracy on the held-out batches (an executor's job)."""
    subnets = Subnets(model, example_inputs, **subnets_kw)
    evaluator = SubnetEvaluator(recal, val, device=device, adaptive_bn=adaptive_bn)
    out = []
    for widths in candidates:
        t0 = time.perf_counter()
        with subnets.masked(tuple(widths)) as sub:
            out.append((evaluator(sub), time.perf_counter() - t0))
    return out


def _score_as_tasks(rec, ex, workers: int, model, example_inputs, subnets_kw, recal, val, device, adaptive_bn,
                    path, on_trial) -> None:
    """Fill in the scores of ``rec``'s unscored (NaN) trials, ``workers`` chunks at once on ``ex``."""
    todo = [t for t in rec.trials if math.isnan(t.score)]
    if not todo:
        return
    chunks = [todo[i::workers] for i in range(min(workers, len(todo)))]
    jobs = [(model, example_inputs, subnets_kw, recal, val, device, adaptive_bn, [t.widths for t in c])
            for c in chunks]
    with ex:
        for i, result, exc in ex.run(_score_chunk, jobs):
            if exc is not None:
                raise exc
            for trial, (score, secs) in zip(chunks[i], result):
                trial.score, trial.seconds = float(score), float(secs)
            if path is not None:
                rec.save(path)
    for trial in todo:
        if on_trial is not None:
            on_trial(trial)


def _measured_checks(rec, best, lat: LatencyModel, limit: float, rounds: int, window: float, max_draws: int,
                     r_max: float, space, cost, score, budget: SearchBudget, seed: int):
    """Time the chosen candidate; while it misses ``limit`` as measured, lower the table's limit by the miss and
    choose again (among the scored candidates under it, else ``budget`` more drawn there)."""
    checks, table_limit = [], limit
    for r in range(rounds + 1):
        measured = lat.measured_fraction(best.widths)
        checks.append({"table_limit": table_limit, "predicted": best.cost, "measured": measured,
                       "index": best.index, "met": measured <= limit + 1e-9})
        if measured <= limit + 1e-9 or r == rounds:
            break
        table_limit = table_limit * limit / measured
        under = [t for t in rec.trials if t.cost <= table_limit + 1e-12]
        if not under:
            def propose(rng, _record, _limit=table_limit):
                widths, n = sample_feasible(space, cost, _limit, rng, lambda g: random_ratios(g, len(space), r_max),
                                            window=window, tries=max_draws)
                return widths, {"draws": n, "check": r + 1}

            more = SearchBudget(evaluations=None if budget.evaluations is None else
                                len(rec.trials) + budget.evaluations,
                                seconds=None if budget.seconds is None else rec.seconds + budget.seconds)
            try:
                run_search(space, propose, score, cost, table_limit, more, seed=seed + r + 1, record=rec)
            except ConfigError:
                pass  # nothing reachable there: the last choice stands, its miss recorded
            under = [t for t in rec.trials if t.cost <= table_limit + 1e-12]
            if not under:
                break
        best = min(under, key=lambda t: (-t.score, t.index))
    if not checks[-1]["met"]:
        log.warning("latency target %.3f missed as measured: the chosen candidate keeps %.3f of the dense latency "
                    "after %d check(s)", limit, checks[-1]["measured"], len(checks))
    return best, checks

