"""The search block: which width each group keeps, found by proposing and scoring candidates.

A search method (EagleEye's random strategies, ABC's bee colony, LeGR's evolution, AMC's agent, ...) is a
*proposer* of candidates over one :class:`SearchSpace` (the kept width of every prunable group, each between
its minimum and its full width, in ``round_to`` units); a candidate's *cost* (its kept fraction of MACs or
parameters, exact from the graph's cost model) is checked against the *limit* before it is evaluated, and
its *score* (higher is better) comes from an evaluator the caller passes in (adaptive-BN accuracy on a held-out
split of the training data, :mod:`prunekit.train.subnet_eval`). :func:`run_search` spends a
:class:`SearchBudget` (evaluations, wall time), records every candidate in a :class:`SearchRecord` (widths,
cost, score, seconds) that is written atomically after each evaluation and resumed from on the next call,
and derives every candidate's random numbers from ``(seed, trial index)`` so a resumed search proposes
what the uninterrupted one would have.

This module knows nothing of models: :class:`prunekit.api.Subnets` turns a model into the space, the exact
cost of a candidate and a masked evaluation that never copies the model.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import ConfigError

__all__ = ["SearchSpace", "SearchBudget", "Trial", "SearchRecord", "run_search", "random_ratios",
           "sample_feasible", "global_ranking_widths", "allowed_widths", "widest_within", "uniform_within"]

Widths = tuple


@dataclass(frozen=True)
class SearchSpace:
    """Per-group kept widths: group ``i`` (``names[i]``, ``widths[i]`` channels) keeps between ``min_kept[i]``
    and ``max_kept[i]`` channels, in multiples of ``round_to`` (or the whole width).

    Example:
        >>> s = SearchSpace.of(["a", "b"], [16, 8], round_to=4)
        >>> s.from_ratios([0.5, 0.9]), s.uniform(0.5)
        ((8, 4), (8, 4))
    """

    names: tuple
    widths: tuple
    min_kept: tuple
    max_kept: tuple
    round_to: int = 1

    @classmethod
    def of(cls, names: Sequence[str], widths: Sequence[int], *, min_kept: Sequence[int] | int = 1,
           max_kept: Sequence[int] | None = None, round_to: int = 1) -> "SearchSpace":
        """A space over ``widths`` with bounds per group (an int ``min_kept`` applies to every group);
        raises ConfigError naming the group for an empty group or bounds that leave no width."""
        if not isinstance(round_to, int) or isinstance(round_to, bool) or round_to < 1:
            raise ConfigError(f"round_to={round_to!r} must be an int >= 1 (kept widths are multiples of it)")
        n = len(widths)
        if len(names) != n:
            raise ConfigError(f"names has {len(names)} entries but widths has {n}; give one name per group")
        if n == 0:
            raise ConfigError("the search space has no group: the model has no prunable channels (check ignore=)")
        lo = [min_kept] * n if isinstance(min_kept, int) else list(min_kept)
        hi = list(widths) if max_kept is None else list(max_kept)
        if len(lo) != n or len(hi) != n:
            raise ConfigError(f"min_kept/max_kept need one entry per group ({n}); got {len(lo)} and {len(hi)}")
        for name, w, a, b in zip(names, widths, lo, hi):
            if int(w) < 1:
                raise ConfigError(f"group {name!r} has width {w}: an empty group cannot be searched; leave it "
                                  f"out of the space (ignore=) or give it channels")
            if not 1 <= a <= b <= w:
                raise ConfigError(f"group {name!r}: min_kept={a}, max_kept={b} with width {w} leaves no width; "
                                  f"need 1 <= min_kept <= max_kept <= width")
        return cls(tuple(map(str, names)), tuple(map(int, widths)), tuple(map(int, lo)), tuple(map(int, hi)),
                   round_to)

    def __len__(self) -> int:
        return len(self.widths)

    def snap(self, i: int, kept: float) -> int:
        """Group ``i``'s kept width nearest ``kept`` that its bounds and ``round_to`` allow."""
        w, lo, hi = self.widths[i], self.min_kept[i], self.max_kept[i]
        k = int(math.ceil(kept - 1e-9))
        if self.round_to > 1 and k < w:
            k = min(w, int(math.ceil(k / self.round_to)) * self.round_to)
        return int(min(hi, max(lo, k)))

    def clip(self, kept: Sequence[float]) -> Widths:
        """``kept`` snapped onto the space (bounds and ``round_to``)."""
        if len(kept) != len(self):
            raise ConfigError(f"a candidate needs {len(self)} widths (one per group); got {len(kept)}")
        return tuple(self.snap(i, k) for i, k in enumerate(kept))

    def from_ratios(self, ratios: Sequence[float]) -> Widths:
        """Kept widths for per-group pruning ratios (fraction of channels removed)."""
        if len(ratios) != len(self):
            raise ConfigError(f"ratios needs {len(self)} entries (one per group); got {len(ratios)}")
        return tuple(self.snap(i, self.widths[i] - math.floor(self.widths[i] * float(r) + 1e-9))
                     for i, r in enumerate(ratios))

    def uniform(self, ratio: float) -> Widths:
        """The same pruning ratio in every group."""
        return self.from_ratios([ratio] * len(self))

    def full(self) -> Widths:
        return tuple(self.max_kept)

    def fingerprint(self) -> str:
        """Identifies the space in a saved record (a resume with another space is refused)."""
        return json.dumps([self.names, self.widths, self.min_kept, self.max_kept, self.round_to])


@dataclass(frozen=True)
class SearchBudget:
    """How much a search may spend: ``evaluations`` (scored candidates) and/or ``seconds`` of wall time
    (checked between evaluations). At least one must be given; neither may be zero."""

    evaluations: int | None = None
    seconds: float | None = None

    def __post_init__(self):
        if self.evaluations is None and self.seconds is None:
            raise ConfigError("SearchBudget needs evaluations= or seconds=; e.g. SearchBudget(evaluations=50)")
        if self.evaluations is not None and (not isinstance(self.evaluations, int) or isinstance(self.evaluations, bool)
                                             or self.evaluations < 1):
            raise ConfigError(f"evaluations={self.evaluations!r} must be an int >= 1: a search budget of zero "
                              f"evaluates nothing; give at least one evaluation")
        if self.seconds is not None and not (isinstance(self.seconds, (int, float)) and self.seconds > 0):
            raise ConfigError(f"seconds={self.seconds!r} must be > 0: a search budget of zero evaluates nothing")

    def spent(self, evaluations: int, seconds: float) -> bool:
        return ((self.evaluations is not None and evaluations >= self.evaluations) or
                (self.seconds is not None and seconds >= self.seconds))


@dataclass
class Trial:
    """One evaluated candidate: ``widths`` (kept per group), ``cost`` (kept fraction of the target's
    resource), ``score`` (higher is better), ``seconds`` its evaluation took, ``info`` the proposer's notes."""

    index: int
    widths: Widths
    cost: float
    score: float
    seconds: float
    info: dict = field(default_factory=dict)


@dataclass
class SearchRecord:
    """Every candidate a search evaluated, in order, with what it spent; JSON round trip for resume."""

    space: str
    limit: float
    trials: list = field(default_factory=list)
    proposals: int = 0  # candidates proposed, including those refused for their cost
    seconds: float = 0.0

    def best(self, k: int = 1) -> list:
        """The ``k`` best trials (ties: the earlier one)."""
        return sorted(self.trials, key=lambda t: (-t.score, t.index))[:k]

    def as_dict(self) -> dict:
        return {"space": json.loads(self.space), "limit": self.limit, "proposals": self.proposals,
                "seconds": self.seconds, "evaluations": len(self.trials),
                "trials": [dict(asdict(t), widths=list(t.widths)) for t in self.trials]}

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (a temporary file renamed over ``path``): an interrupt never leaves half a record."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.as_dict(), f, indent=1)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike, space: SearchSpace, limit: float) -> "SearchRecord":
        """A saved record, refused when it belongs to another space or limit."""
        d = json.loads(Path(path).read_text())
        if json.dumps(d["space"]) != space.fingerprint() or not math.isclose(d["limit"], limit):
            raise ConfigError(f"resume={str(path)!r} holds a search over another space or limit "
                              f"(limit {d['limit']} vs {limit}); pass a new record path or the same model and target")
        trials = [Trial(t["index"], tuple(t["widths"]), t["cost"], t["score"], t["seconds"], t.get("info", {}))
                  for t in d["trials"]]
        return cls(space.fingerprint(), limit, trials, d["proposals"], d["seconds"])


def random_ratios(rng: np.random.Generator, n: int, max_ratio: float) -> np.ndarray:
    """EagleEye's strategy: a pruning ratio per group drawn from U(0, ``max_ratio``)."""
    return rng.uniform(0.0, max_ratio, n)


def sample_feasible(space: SearchSpace, cost: Callable[[Widths], float], limit: float, rng: np.random.Generator,
                    draw: Callable[[np.random.Generator], Sequence[float]], *, window: float | None = None,
                    tries: int = 1000) -> tuple[Widths | None, int]:
    """Draw ratios until a candidate's cost is within the limit (and, with ``window``, no further below it
    than ``window``, EagleEye's +-0.5% FLOPs band); returns ``(widths or None, draws made)``."""
    for n in range(1, tries + 1):
        widths = space.from_ratios(draw(rng))
        c = cost(widths)
        if c <= limit + 1e-12 and (window is None or c >= limit - window):
            return widths, n
    return None, tries


def global_ranking_widths(space: SearchSpace, scores: Sequence[np.ndarray], cost: Callable[[Widths], float],
                          limit: float) -> Widths:
    """Widths from one global ranking: the lowest ``scores`` over every group go first (a group never below
    its ``min_kept``) until the cost is within ``limit`` (the fewest removals that reach it, by bisection).

    ``scores[i]`` holds group ``i``'s channel scores, already comparable across groups (LeGR's affine-transformed
    norms); inside a group the lowest go first, as the group's own criterion ranks them when the transform is
    increasing. Raises ConfigError when removing every channel the bounds allow still misses the limit.

    Example:
        >>> s = SearchSpace.of(["a", "b"], [4, 4])
        >>> global_ranking_widths(s, [np.array([1., 2, 3, 4]), np.array([10., 20, 30, 40])],
        ...                       lambda w: sum(w) / 8, 0.5)
        (1, 3)
    """
    if len(scores) != len(space):
        raise ConfigError(f"scores has {len(scores)} groups; the space has {len(space)}")
    vals, gid = [], []
    for i, sc in enumerate(scores):
        sc = np.sort(np.asarray(sc, float))[: space.widths[i] - space.min_kept[i]]
        vals.append(sc)
        gid.append(np.full(len(sc), i))
    vals, gid = np.concatenate(vals), np.concatenate(gid)
    order = gid[np.argsort(vals, kind="stable")]

    def widths_after(n: int) -> Widths:
        removed = np.bincount(order[:n], minlength=len(space))
        return space.clip([w - int(r) for w, r in zip(space.widths, removed)])

    lo, hi = 0, len(order)
    if cost(widths_after(hi)) > limit + 1e-12:
        raise ConfigError(f"the limit {limit} cannot be reached: with every group at its minimum width the cost is "
                          f"{cost(widths_after(hi)):.4f}; lower the per-group floor (safeguard / min_kept) or raise "
                          f"the target")
    while lo < hi:
        mid = (lo + hi) // 2
        if cost(widths_after(mid)) <= limit + 1e-12:
            hi = mid
        else:
            lo = mid + 1
    return widths_after(lo)


def allowed_widths(space: SearchSpace, i: int) -> list:
    """Every kept width group ``i`` can take (its bounds and ``round_to``), ascending."""
    return sorted({space.snap(i, k) for k in range(space.min_kept[i], space.max_kept[i] + 1)})


def widest_within(space: SearchSpace, cost: Callable[[Widths], float], limit: float, widths: Sequence[int],
                  i: int) -> int | None:
    """The widest width of group ``i`` keeping ``cost`` within ``limit`` with every other group at ``widths``
    (bisection over :func:`allowed_widths`; the cost must not fall as a width grows); None when even the
    narrowest misses the limit. AMC's "action wall" asks this with the later groups at their floor.

    Example:
        >>> s = SearchSpace.of(["a", "b"], [8, 8], round_to=2)
        >>> widest_within(s, lambda w: sum(w) / 16, 0.5, (2, 2), 0)
        6
    """
    opts = allowed_widths(space, i)
    w = list(widths)

    def ok(k: int) -> bool:
        w[i] = k
        return cost(tuple(w)) <= limit + 1e-12

    if not ok(opts[0]):
        return None
    lo, hi = 0, len(opts) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(opts[mid]):
            lo = mid
        else:
            hi = mid - 1
    return opts[lo]


def uniform_within(space: SearchSpace, cost: Callable[[Widths], float], limit: float, *, steps: int = 40) -> Widths:
    """The uniform allocation (one pruning ratio for every group) with the smallest ratio whose cost is within
    ``limit`` (bisection on the ratio): the baseline of a search under any cost, e.g. measured latency.
    Raises ConfigError when even every group at its floor misses the limit."""
    floor = tuple(space.min_kept)
    if cost(floor) > limit + 1e-12:
        raise ConfigError(f"the limit {limit} cannot be reached: with every group at its minimum width the cost is "
                          f"{cost(floor):.4f}; raise the target or lower the per-group floor")
    if cost(space.full()) <= limit + 1e-12:
        return space.full()
    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        if cost(space.uniform(mid)) <= limit + 1e-12:
            hi = mid
        else:
            lo = mid
    widths = space.uniform(hi)
    return widths if cost(widths) <= limit + 1e-12 else floor


Proposer = Callable[[np.random.Generator, SearchRecord], "tuple[Widths | None, dict]"]


def run_search(space: SearchSpace, propose: Proposer, evaluate: Callable[[Widths], float],
               cost: Callable[[Widths], float], limit: float, budget: SearchBudget, *, seed: int = 0,
               record: SearchRecord | None = None, path: str | os.PathLike | None = None,
               on_trial: Callable[[Trial], None] | None = None) -> SearchRecord:
    """Propose, check the cost, evaluate and record until ``budget`` is spent.

    ``propose(rng, record) -> (widths | None, info)``: the next candidate (None: the proposer gives up) and
    notes kept with it; ``rng`` is seeded from ``(seed, trial index)``. A candidate over ``limit`` is counted
    in ``record.proposals`` and not evaluated. ``path``: the record is saved there after every evaluation and,
    when the file exists, the search resumes from it (its candidates are not evaluated again).
    """
    if not 0 < limit:
        raise ConfigError(f"limit={limit!r} must be > 0 (the kept fraction of the target's resource)")
    if record is None:
        record = (SearchRecord.load(path, space, limit) if path is not None and Path(path).exists()
                  else SearchRecord(space.fingerprint(), float(limit)))
    start = time.perf_counter() - record.seconds
    stalls = 0
    while not budget.spent(len(record.trials), time.perf_counter() - start):
        index = len(record.trials)
        rng = np.random.default_rng([seed, index, record.proposals])
        widths, info = propose(rng, record)
        record.proposals += 1
        if widths is None:
            break
        widths = space.clip(widths)
        c = float(cost(widths))
        if c > limit + 1e-12:
            stalls += 1
            if stalls > 10_000:
                raise ConfigError(f"the proposer gave 10,000 candidates in a row over the limit {limit}; the "
                                  f"target may be unreachable in this space (lower min_kept or raise the target)")
            continue
        stalls = 0
        t0 = time.perf_counter()
        score = float(evaluate(widths))
        trial = Trial(index, widths, c, score, time.perf_counter() - t0, dict(info))
        record.trials.append(trial)
        record.seconds = time.perf_counter() - start
        if path is not None:
            record.save(path)
        if on_trial is not None:
            on_trial(trial)
    record.seconds = time.perf_counter() - start
    return record
