"""Speed/accuracy Pareto fronts, and a search that trains fewer candidates by the partial order of their sizes.

:func:`pareto_front` keeps the candidates no other candidate beats on both axes (cost no higher, score no
lower, one of them strictly). :func:`partial_order_search` is the cut of Partial Order Pruning (Li et al.,
CVPR 2019): candidates are size vectors (width/depth multipliers per stage) ordered elementwise, and the
*partial-order assumption* says a candidate no larger than another in every coordinate is no more accurate.
Latency is cheap (measured or predicted for every candidate up front); accuracy is dear (a training run). The
trained candidates above ``c`` in the order bound its accuracy from above; when a trained candidate that is
faster than ``c`` already reaches that bound, ``c`` cannot be on the front and is never trained. Under the
assumption the front of the trained candidates is the front of exhaustive search.

Which candidate to train next is ours (the paper's search code is not public): always the one whose score
could cut the most untrained candidates right away (those below it in the order that a faster trained
candidate could already beat), else the fastest untrained one (the fastest is always on the front).

Example:
    >>> pareto_front([1.0, 2.0, 3.0, 2.5], [0.80, 0.85, 0.90, 0.84])
    [0, 1, 2]
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..errors import ConfigError

__all__ = ["dominates", "pareto_front", "precedes", "accuracy_bounds", "PartialOrderResult",
           "partial_order_search", "ORDERS"]

ORDERS = ("cut-first", "latency", "exhaustive")


def dominates(a: tuple, b: tuple) -> bool:
    """``a = (cost, score)`` beats ``b``: cost no higher, score no lower, and better in one of them.

    Example:
        >>> dominates((1.0, 0.9), (2.0, 0.9)), dominates((1.0, 0.9), (1.0, 0.9))
        (True, False)
    """
    return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])


def pareto_front(costs: Sequence[float], scores: Sequence[float]) -> list:
    """Indices of the points no other point dominates (lower cost is better, higher score is better), by cost
    ascending (ties: the index). Two identical points are both kept."""
    if len(costs) != len(scores):
        raise ConfigError(f"costs has {len(costs)} entries and scores {len(scores)}; give one of each per point")
    pts = [(float(c), float(s)) for c, s in zip(costs, scores)]
    if any(math.isnan(c) or math.isnan(s) for c, s in pts):
        raise ConfigError("pareto_front: a cost or score is NaN; every point needs both numbers")
    front = [i for i, p in enumerate(pts) if not any(dominates(q, p) for q in pts)]
    return sorted(front, key=lambda i: (pts[i][0], i))


def precedes(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is no larger than ``b`` in every coordinate (the partial order of sizes; a candidate precedes
    itself)."""
    return len(a) == len(b) and all(x <= y for x, y in zip(a, b))


def accuracy_bounds(configs: Sequence[Sequence[float]], scores: dict) -> tuple[list, list]:
    """``(lower, upper)`` bound of every candidate's score from the trained ones (``scores``: index -> score)
    under the partial-order assumption: at least the best trained candidate below it, at most the worst trained
    candidate above it (``-inf``/``inf`` where there is none)."""
    lo, hi = [], []
    for c in configs:
        below = [s for j, s in scores.items() if precedes(configs[j], c)]
        above = [s for j, s in scores.items() if precedes(c, configs[j])]
        lo.append(max(below, default=-math.inf))
        hi.append(min(above, default=math.inf))
    return lo, hi


@dataclass
class PartialOrderResult:
    """What :func:`partial_order_search` did: ``trained`` (indices in the order they were trained),
    ``scores`` (index -> score of the trained ones), ``cut`` (index -> ``{"by", "bound"}``: the faster trained
    candidate that beats the untrained one's upper bound), ``front`` (indices, by latency) and ``violations``
    (trained pairs where the smaller candidate scored higher than the larger one: the assumption failed there)."""

    configs: list
    latency: list
    trained: list = field(default_factory=list)
    scores: dict = field(default_factory=dict)
    cut: dict = field(default_factory=dict)
    front: list = field(default_factory=list)
    violations: list = field(default_factory=list)

    @property
    def saved(self) -> float:
        """Fraction of candidates never trained."""
        return 1.0 - len(self.trained) / max(len(self.configs), 1)

    def as_dict(self) -> dict:
        return {"configs": [list(c) for c in self.configs], "latency": list(self.latency),
                "trained": list(self.trained), "scores": {str(k): v for k, v in self.scores.items()},
                "cut": {str(k): v for k, v in self.cut.items()}, "front": list(self.front),
                "violations": [list(v) for v in self.violations], "saved": self.saved}


def _cuttable(i: int, configs, latency, scores: dict, upper: float) -> dict | None:
    """A trained candidate faster than ``i`` that reaches ``upper`` (ties in one axis need the other strict)."""
    best = None
    for j, s in scores.items():
        if (latency[j] < latency[i] and s >= upper) or (latency[j] <= latency[i] and s > upper):
            if best is None or latency[j] < latency[best]:
                best = j
    return None if best is None else {"by": best, "bound": upper}


def _next(pending: list, configs, latency, scores: dict, order: str) -> int:
    if order != "cut-first":
        return min(pending, key=lambda i: (latency[i], i))
    lower, _ = accuracy_bounds(configs, scores)
    gain = {}
    for x in pending:
        # the candidates x's score could cut: below x, with a faster trained candidate at least x's lower bound
        gain[x] = sum(1 for c in pending if c != x and precedes(configs[c], configs[x]) and
                      any(latency[d] < latency[c] and s >= lower[x] for d, s in scores.items()))
    return max(pending, key=lambda i: (gain[i], -latency[i], -i))


def partial_order_search(configs: Sequence[Sequence[float]], latency: Sequence[float],
                         train: Callable[[int], float], *, order: str = "cut-first",
                         on_trained: Callable[[int, float], None] | None = None) -> PartialOrderResult:
    """Train candidates (``train(i) -> score``, higher is better) until every one is trained or cut, and return
    the speed/accuracy front of the trained ones (see the module docstring).

    ``configs[i]``: candidate ``i``'s size vector (e.g. ``(width_mult, depth)``; elementwise larger = at least
    as accurate, the partial-order assumption); ``latency[i]``: its measured or predicted latency (any cost,
    lower is better). ``order``: ``"cut-first"`` (ours, see above), ``"latency"`` (fastest first: cuts
    nothing, since a candidate's bound needs a larger trained one) or ``"exhaustive"`` (train all, no cut).

    Example:
        >>> cfg = [(8, 2), (16, 2), (8, 3), (8, 4)]
        >>> acc = [0.80, 0.86, 0.82, 0.83]
        >>> r = partial_order_search(cfg, [1.0, 1.5, 2.0, 2.5], acc.__getitem__)
        >>> r.trained, r.cut, r.front
        ([0, 3, 1], {2: {'by': 1, 'bound': 0.83}}, [0, 1])
    """
    if order not in ORDERS:
        raise ConfigError(f"order={order!r} is not valid; choose one of {', '.join(map(repr, ORDERS))}")
    configs = [tuple(float(v) for v in c) for c in configs]
    latency = [float(v) for v in latency]
    if len(configs) != len(latency):
        raise ConfigError(f"configs has {len(configs)} candidates and latency {len(latency)}; one latency each")
    if not configs:
        raise ConfigError("partial_order_search: no candidate; give at least one configuration")
    if len({len(c) for c in configs}) != 1:
        raise ConfigError("partial_order_search: every configuration needs the same number of coordinates")
    res = PartialOrderResult(configs, latency)
    pending = list(range(len(configs)))
    while pending:
        if order != "exhaustive":
            _, upper = accuracy_bounds(configs, res.scores)
            for i in list(pending):
                why = _cuttable(i, configs, latency, res.scores, upper[i])
                if why is not None:
                    res.cut[i] = why
                    pending.remove(i)
            if not pending:
                break
        i = _next(pending, configs, latency, res.scores, order)
        pending.remove(i)
        res.scores[i] = float(train(i))
        res.trained.append(i)
        if on_trained is not None:
            on_trained(i, res.scores[i])
    t = res.trained
    res.front = [t[k] for k in pareto_front([latency[i] for i in t], [res.scores[i] for i in t])]
    res.violations = [(a, b) for a in t for b in t if a != b and precedes(configs[a], configs[b])
                      and configs[a] != configs[b] and res.scores[a] > res.scores[b]]
    return res
