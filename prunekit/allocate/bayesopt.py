"""Constrained Bayesian optimisation of a few hyper-parameters, through optuna's Gaussian-process sampler.

The search block of the budget-search methods: a handful of bounded variables (per-layer pruning ratios, a
trade-off factor, ...), an objective to maximise (or minimise), black-box inequality constraints (each value
``<= 0`` is feasible), a budget of evaluations and a seed. A Gaussian process (Matern 5/2, ARD) models the
objective and each constraint; the next point maximises the expected improvement times the probability of
feasibility (Gardner et al., ICML 2014: the constrained EI that MATLAB's ``bayesopt`` uses for coupled
constraints, the tool of Chen et al., ECCV 2018). The first ``startup`` points are drawn at random.
The GP, its fit and the acquisition maximisation are optuna's (``optuna.samplers.GPSampler`` with
constraints set on each trial); this module only states the problem and keeps the record: every evaluation with its
parameters, objective, constraint values and feasibility, and the best feasible one.

optuna is an optional extra (``pip install 'prunekit[search]'``): it is imported when a search runs, and a
missing install is a ``ConfigError`` that names the extra.

Example:
    >>> from prunekit.allocate.bayesopt import Variable, bayesopt
    >>> res = bayesopt(lambda p: -(p["x"] - 0.3) ** 2, [Variable("x", 0.0, 1.0)],
    ...                constraints=lambda p: [p["x"] - 0.5], budget=12, startup=4, seed=0)  # doctest: +SKIP
    >>> res.best.feasible, len(res.evaluations)  # doctest: +SKIP
    (True, 12)
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from ..errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["Variable", "Evaluation", "SearchResult", "bayesopt", "require_optuna", "EXTRA"]

EXTRA = "search"  # the optional extra that installs the library: pip install 'prunekit[search]'


@dataclass(frozen=True)
class Variable:
    """One search variable: a float in ``[low, high]`` (``integer=True``: an int; ``step``: a grid)."""

    name: str
    low: float
    high: float
    integer: bool = False
    step: float | None = None


@dataclass(frozen=True)
class Evaluation:
    """One evaluated point: its parameters, objective, constraint values (``<= 0`` feasible) and feasibility."""

    index: int
    params: dict
    objective: float
    constraints: tuple
    feasible: bool

    def as_dict(self) -> dict:
        return {"index": self.index, "params": dict(self.params), "objective": self.objective,
                "constraints": list(self.constraints), "feasible": self.feasible}


@dataclass
class SearchResult:
    """Every evaluation in order, the best feasible one (``None`` when none was feasible), the budget and seed."""

    evaluations: list = field(default_factory=list)
    best: Evaluation | None = None
    budget: int = 0
    seed: int = 0
    maximize: bool = True

    @property
    def feasible_fraction(self) -> float:
        return sum(e.feasible for e in self.evaluations) / len(self.evaluations) if self.evaluations else 0.0

    def least_violating(self) -> Evaluation | None:
        """The evaluation with the smallest total constraint violation (ties: the better objective)."""
        if not self.evaluations:
            return None
        sign = -1.0 if self.maximize else 1.0
        return min(self.evaluations, key=lambda e: (sum(max(c, 0.0) for c in e.constraints), sign * e.objective))

    def as_dict(self) -> dict:
        return {"budget": self.budget, "seed": self.seed, "maximize": self.maximize,
                "feasible_fraction": self.feasible_fraction,
                "best": self.best.as_dict() if self.best is not None else None,
                "evaluations": [e.as_dict() for e in self.evaluations]}


def require_optuna():
    """The ``optuna`` module, or a ``ConfigError`` naming the extra to install."""
    try:
        import optuna
    except ImportError as e:
        raise ConfigError(f"constrained Bayesian optimisation needs optuna, which is not installed ({e}); "
                          f"install the extra: pip install 'prunekit[{EXTRA}]'") from None
    return optuna


def _check(variables: Sequence[Variable], budget, startup, enqueue) -> None:
    problems = []
    names = [v.name for v in variables]
    if not variables:
        problems.append("variables=[]: give at least one Variable(name, low, high)")
    if len(set(names)) != len(names):
        problems.append(f"variables: names must be unique, got {names}")
    for v in variables:
        if not (math.isfinite(v.low) and math.isfinite(v.high) and v.low < v.high):
            problems.append(f"variable {v.name!r}: bounds ({v.low}, {v.high}) must be finite with low < high")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        problems.append(f"budget={budget!r} must be an int >= 1 (evaluations of the objective)")
    if isinstance(startup, bool) or not isinstance(startup, int) or startup < 1:
        problems.append(f"startup={startup!r} must be an int >= 1 (random evaluations before the GP)")
    for point in enqueue:
        missing = [n for n in names if n not in point]
        if missing:
            problems.append(f"enqueue point {dict(point)!r} lacks {missing}")
    if problems:
        raise ConfigError("bayesopt: " + "; ".join(problems))


def _suggest(trial, v: Variable):
    if v.integer:
        return trial.suggest_int(v.name, int(v.low), int(v.high), step=int(v.step or 1))
    return trial.suggest_float(v.name, float(v.low), float(v.high), step=v.step)


def bayesopt(objective: Callable[[dict], float], variables: Sequence[Variable], *,
             constraints: Callable[[dict], Sequence[float]] | None = None, budget: int = 30, startup: int = 10,
             seed: int = 0, maximize: bool = True, enqueue: Sequence[Mapping] = (),
             on_evaluation: Callable[[Evaluation], None] | None = None) -> SearchResult:
    """Optimise ``objective(params)`` over ``variables`` subject to ``constraints(params) <= 0`` (each entry).

    ``budget`` evaluations in all, the first ``startup`` (at least) drawn at random, then one GP-guided point at
    a time (constrained expected improvement). ``enqueue``: points evaluated first (they count in the budget).
    ``constraints`` is evaluated before ``objective`` on every point; both are recorded. The same ``seed``
    gives the same sequence of points (and so the same result) for a deterministic objective. Returns a
    :class:`SearchResult`; its ``best`` is the best *feasible* evaluation, ``None`` if none was.
    """
    variables = list(variables)
    enqueue = list(enqueue)
    _check(variables, budget, startup, enqueue)
    optuna = require_optuna()
    result = SearchResult(budget=budget, seed=seed, maximize=maximize)
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # optuna logs every trial at INFO; we keep our record
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup, deterministic_objective=True,
                                                independent_sampler=optuna.samplers.RandomSampler(seed=seed))
            study = optuna.create_study(direction="maximize" if maximize else "minimize", sampler=sampler)
        for point in enqueue:
            study.enqueue_trial({v.name: point[v.name] for v in variables})
        for i in range(budget):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.filterwarnings("ignore", category=RuntimeWarning, module="optuna")  # its 0/0 in tie-breaks
                trial = study.ask()
                params = {v.name: _suggest(trial, v) for v in variables}
            cons = tuple(float(c) for c in constraints(params)) if constraints is not None else ()
            for j, c in enumerate(cons):  # the GP models each constraint (optuna: feasible when <= 0)
                trial.set_constraint(f"c{j}", c)
            value = float(objective(params))
            if not math.isfinite(value):
                raise ConfigError(f"bayesopt: objective({params}) = {value}; the objective must be finite")
            study.tell(trial, value)
            ev = Evaluation(index=i, params=params, objective=value, constraints=cons,
                            feasible=all(c <= 0.0 for c in cons))
            result.evaluations.append(ev)
            if on_evaluation is not None:
                on_evaluation(ev)
            log.debug("bayesopt %d/%d: %s -> %.6g, constraints %s", i + 1, budget, params, value, cons)
    finally:
        optuna.logging.set_verbosity(level)
    feasible = [e for e in result.evaluations if e.feasible]
    if feasible:
        result.best = (max if maximize else min)(feasible, key=lambda e: e.objective)
    return result
