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
           "sample_feasible", "global_ranking_widths", "allowed_widths", "widest_within", "uniform_within",
           "abc_neighbour", "BeeColony", "anneal_accept", "Annealer"]

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


# ---------------------------------------------------------------------------------- artificial bee colony (ABC)
def abc_neighbour(rng: np.random.Generator, code: Sequence[int], partner: Sequence[int], change: int, lo: int,
                  hi: int, rounding: str = "truncate") -> list:
    """The bee colony's move (Karaboga's ABC as ABCPruner uses it): ``change`` coordinates ``j`` (drawn with
    replacement) get ``v_j = x_j + r * (x_j - x_kj)``, ``r ~ U(-1, 1)``, ``x_k`` the ``partner`` source, made an
    int (``"truncate"``: towards zero, as the reference code's ``int()``; ``"nearest"``: rounded) and clipped to
    ``[lo, hi]``; the other coordinates are kept. Truncation never moves a code up by less than a whole step,
    so its moves lean towards smaller codes.

    Example:
        >>> abc_neighbour(np.random.default_rng(0), [5, 5, 5], [1, 1, 1], 1, 1, 9)
        [5, 5, 3]
    """
    v = [int(c) for c in code]
    js = rng.integers(0, len(v), change)
    rs = rng.uniform(-1.0, 1.0, change)
    for j, r in zip(js.tolist(), rs.tolist()):
        x = code[j] + r * (code[j] - partner[j])
        v[j] = int(min(hi, max(lo, int(x) if rounding == "truncate" else int(np.floor(x + 0.5)))))
    return v


class BeeColony:
    """The artificial bee colony as a proposer for :func:`run_search` (ABCPruner, Lin et al., IJCAI 2020).

    A food source is an integer code (one entry per group in ``[lo, hi]``); ``to_widths(code)`` maps it to a
    candidate. ``food_number`` random sources are scored first; then every cycle (1) an employed bee per source
    tries :func:`abc_neighbour` against another random source and the source keeps the better of the two
    (greedy; a source not improved counts a trail), (2) onlooker bees walk round the sources, each source taken
    with probability ``0.9 * fitness / max fitness + 0.1``, until ``food_number`` moves were tried the same way,
    (3) the source with the most trails, if at least ``food_limit``, is abandoned for a random one (a scout).
    After ``cycles`` cycles the proposer gives up (``None``).

    ``feasible(code)``: a move (or random source) failing it is drawn again, at most ``tries`` times (ours: the
    target; the paper has no constraint but the cap ``hi``); when every try fails the bee re-proposes its source.
    The colony's state is replayed from the record's trials (their ``info`` holds phase, source and code), so a
    resumed search continues exactly where it stopped.
    """

    def __init__(self, dims: int, to_widths: Callable[[list], Widths], *, food_number: int = 10,
                 food_limit: int = 5, change: int = 2, lo: int = 1, hi: int = 9, cycles: int = 50,
                 feasible: Callable[[list], bool] = lambda code: True, tries: int = 1000,
                 rounding: str = "truncate"):
        if rounding not in ("truncate", "nearest"):
            raise ConfigError(f"rounding={rounding!r} is not valid; choose 'truncate' or 'nearest'")
        if food_number < 2:
            raise ConfigError(f"food_number={food_number!r} must be >= 2: a bee moves relative to another source")
        if not 1 <= lo <= hi:
            raise ConfigError(f"code bounds lo={lo!r}, hi={hi!r} need 1 <= lo <= hi")
        self.dims, self.to_widths, self.food_number, self.food_limit = dims, to_widths, food_number, food_limit
        self.change, self.lo, self.hi, self.cycles, self.feasible, self.tries = change, lo, hi, cycles, feasible, tries
        self.rounding = rounding

    def max_evaluations(self) -> int:
        """Evaluations of a full run: the initial sources, then per cycle an employed and an onlooker bee per
        source and at most one scout."""
        return self.food_number + self.cycles * (2 * self.food_number + 1)

    # -- state, replayed from the trials ---------------------------------------------------------------------
    def state(self, trials: Sequence[Trial]) -> dict:
        """``{"sources": [[code, fitness, trail]], "phase", "i", "t", "cycle", "scouts"}`` after ``trials``."""
        st = {"sources": [None] * self.food_number, "phase": "init", "i": 0, "t": 0, "cycle": 0, "scouts": 0}
        for tr in trials:
            self._apply(st, tr.info, tr.score)
        if st["phase"] == "scout" and not self._abandoned(st):
            st["phase"], st["i"], st["cycle"] = "employed", 0, st["cycle"] + 1  # no source to abandon
        return st

    def _abandoned(self, st: dict) -> int | None:
        trails = [s[2] for s in st["sources"]]
        j = int(np.argmax(trails))
        return j if trails[j] >= self.food_limit else None

    def _apply(self, st: dict, info: dict, score: float) -> None:
        phase, j, code = info["phase"], info["source"], list(info["code"])
        srcs = st["sources"]
        if phase in ("init", "scout"):
            srcs[j] = [code, score, 0]
        elif score > srcs[j][1]:  # greedy selection between the source and the bee's move
            srcs[j] = [code, score, 0]
        else:
            srcs[j][2] += 1
        if phase == "init":
            st["i"] = j + 1
            if st["i"] == self.food_number:
                st["phase"], st["i"] = "employed", 0
        elif phase == "employed":
            st["i"] = j + 1
            if st["i"] == self.food_number:
                st["phase"], st["i"], st["t"] = "onlooker", 0, 0
        elif phase == "onlooker":
            st["t"] += 1
            st["i"] = (j + 1) % self.food_number
            if st["t"] == self.food_number:
                st["phase"] = "scout"
                if not self._abandoned(st):
                    st["phase"], st["i"], st["cycle"] = "employed", 0, st["cycle"] + 1
        else:  # a scout ends the cycle
            st["scouts"] += 1
            st["phase"], st["i"], st["cycle"] = "employed", 0, st["cycle"] + 1

    # -- proposals -------------------------------------------------------------------------------------------
    def _random(self, rng: np.random.Generator) -> list:
        for _ in range(self.tries):
            code = rng.integers(self.lo, self.hi + 1, self.dims).tolist()
            if self.feasible(code):
                return code
        raise ConfigError(f"no random food source met the target in {self.tries} draws; raise the target or the "
                          f"code cap (max_preserve), or lower the floor")

    def _move(self, rng: np.random.Generator, st: dict, j: int) -> tuple[list, bool]:
        code = st["sources"][j][0]
        for _ in range(self.tries):
            k = int(rng.integers(0, self.food_number - 1))
            k += k >= j  # a partner other than j
            v = abc_neighbour(rng, code, st["sources"][k][0], self.change, self.lo, self.hi, self.rounding)
            if self.feasible(v):
                return v, False
        return list(code), True

    def __call__(self, rng: np.random.Generator, record: SearchRecord):
        st = self.state(record.trials)
        if st["phase"] != "init" and st["cycle"] >= self.cycles:
            return None, {}
        phase = st["phase"]
        stuck = False
        if phase == "init":
            j, code = st["i"], self._random(rng)
        elif phase == "employed":
            j = st["i"]
            code, stuck = self._move(rng, st, j)
        elif phase == "onlooker":
            fits = np.array([s[1] for s in st["sources"]], float)
            top = fits.max()
            prob = 0.9 * fits / top + 0.1 if top > 0 else np.ones_like(fits)
            j = st["i"]
            while rng.uniform() >= prob[j]:
                j = (j + 1) % self.food_number
            code, stuck = self._move(rng, st, j)
        else:
            j, code = self._abandoned(st), self._random(rng)
        info = {"phase": phase, "source": int(j), "code": [int(c) for c in code], "cycle": st["cycle"]}
        if stuck:
            info["stuck"] = True
        return self.to_widths(code), info


# ---------------------------------------------------------------------------------------- simulated annealing
def anneal_accept(new: float, current: float, temperature: float, u: float) -> bool:
    """Metropolis rule (scores higher is better): accept a better or equal candidate, a worse one when
    ``u < exp((new - current) / T)``.

    Example:
        >>> anneal_accept(0.8, 0.9, 0.1, 0.3), anneal_accept(0.8, 0.9, 0.1, 0.4)  # exp(-1) = 0.368
        (True, False)
    """
    if new >= current:
        return True
    return temperature > 0 and u < math.exp((new - current) / temperature)


class Annealer:
    """Simulated annealing over per-group pruning ratios as a proposer for :func:`run_search` (AutoCompress).

    The first candidate is ``start`` (ratios); then each step moves from the current state by ``move(rng,
    ratios, temperature) -> ratios`` (drawn again, at most ``tries`` times, until ``feasible(widths)``), and the
    candidate becomes the current state by :func:`anneal_accept` at the temperature ``t0 * cooling**step``. The
    acceptance draw of trial ``i`` comes from ``(seed, i)``, so the state is replayed from the record's trials
    (their ``info`` holds the ratios) and a resumed search continues exactly.
    """

    def __init__(self, start: Sequence[float], to_widths: Callable[[Sequence[float]], Widths],
                 move: Callable[[np.random.Generator, np.ndarray, float], np.ndarray], *, t0: float = 0.05,
                 cooling: float = 0.9, steps: int = 50, feasible: Callable[[Widths], bool] = lambda w: True,
                 tries: int = 1000, seed: int = 0):
        if not t0 > 0 or not 0 < cooling <= 1:
            raise ConfigError(f"t0={t0!r} must be > 0 and cooling={cooling!r} in (0, 1]")
        self.start, self.to_widths, self.move = np.asarray(start, float), to_widths, move
        self.t0, self.cooling, self.steps, self.feasible, self.tries, self.seed = t0, cooling, steps, feasible, tries, seed

    def temperature(self, step: int) -> float:
        return self.t0 * self.cooling ** step

    def state(self, trials: Sequence[Trial]) -> dict:
        """``{"ratios", "score", "accepted", "rejected", "decisions"}`` after ``trials`` (the first is the start)."""
        st = {"ratios": None, "score": -math.inf, "accepted": 0, "rejected": 0, "decisions": []}
        for tr in trials:
            if st["ratios"] is None:
                st["ratios"], st["score"] = np.asarray(tr.info["ratios"], float), tr.score
                continue
            u = float(np.random.default_rng([self.seed, tr.index, 1]).uniform())
            ok = anneal_accept(tr.score, st["score"], self.temperature(tr.info["step"]), u)
            st["decisions"].append(bool(ok))
            if ok:
                st["ratios"], st["score"] = np.asarray(tr.info["ratios"], float), tr.score
                st["accepted"] += 1
            else:
                st["rejected"] += 1
        return st

    def __call__(self, rng: np.random.Generator, record: SearchRecord):
        step = len(record.trials)
        if step > self.steps:
            return None, {}
        if step == 0:
            return self.to_widths(self.start), {"ratios": self.start.tolist(), "step": 0}
        st = self.state(record.trials)
        temp = self.temperature(step)
        for _ in range(self.tries):
            ratios = np.asarray(self.move(rng, st["ratios"].copy(), temp), float)
            widths = self.to_widths(ratios)
            if self.feasible(widths):
                return widths, {"ratios": ratios.tolist(), "step": step, "temperature": temp}
        return None, {}
