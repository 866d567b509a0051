"""Candidate grids over stages, and progressive pruning of candidates along a data curriculum.

:func:`stage_candidates` turns a :class:`~prunekit.allocate.search.SearchSpace` into the coarse grid the
search-space papers search: the groups split into ``stages`` contiguous blocks in network order, every block
at one width multiplier of a short list (POP's per-stage widths), each candidate a multiplier per stage and
the kept widths it means.

:func:`progressive_prune` is DA-NAS's loop (Dai et al., ECCV 2020) without its network: stage ``s`` scores the
surviving candidates of every slot on the stage's data (``score(stage, alive) -> scores``), keeps the top
``keep`` fraction of each slot (at least one), and the next stage scores the survivors on more (harder)
data. A slot is a supernet layer holding candidate operations, or the one slot of whole-width candidates.
:func:`class_curriculum` orders classes from easy to hard and gives each stage its classes.

Example:
    >>> log = progressive_prune([4, 4], 2, lambda s, alive: [[float(i) for i in a] for a in alive], keep=0.5)
    >>> log.alive
    [[3], [3]]
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..errors import ConfigError
from .search import SearchSpace

__all__ = ["stage_blocks", "stage_candidates", "progressive_prune", "ProgressiveLog", "class_curriculum"]


def stage_blocks(n_groups: int, stages: int) -> list:
    """``stages`` contiguous, near-equal blocks of group indices (fewer when there are fewer groups).

    Example:
        >>> stage_blocks(5, 2)
        [[0, 1, 2], [3, 4]]
    """
    if not isinstance(stages, int) or isinstance(stages, bool) or stages < 1:
        raise ConfigError(f"stages={stages!r} must be an int >= 1 (blocks of layers sharing a width multiplier)")
    stages = min(stages, n_groups)
    return [a.tolist() for a in np.array_split(np.arange(n_groups), stages)]


def stage_candidates(space: SearchSpace, stages: int, multipliers: Sequence[float]) -> tuple[list, list]:
    """``(configs, widths)``: every combination of one multiplier per stage (``configs[i]``, a tuple) and the
    kept widths it gives (each group keeps ``multiplier`` of its width, snapped onto the space), duplicates
    of the same widths dropped. Raises ConfigError for a multiplier outside (0, 1]."""
    mults = sorted({float(m) for m in multipliers})
    bad = [m for m in mults if not 0 < m <= 1]
    if bad or not mults:
        raise ConfigError(f"multipliers={list(multipliers)!r}: each must be in (0, 1] (the kept fraction of a "
                          f"stage's channels), e.g. (0.25, 0.5, 1.0)")
    blocks = stage_blocks(len(space), stages)
    configs, widths, seen = [], [], set()
    for combo in itertools.product(mults, repeat=len(blocks)):
        ratios = [0.0] * len(space)
        for m, block in zip(combo, blocks):
            for g in block:
                ratios[g] = 1.0 - m
        w = space.from_ratios(ratios)
        if w not in seen:
            seen.add(w)
            configs.append(tuple(combo))
            widths.append(w)
    return configs, widths


@dataclass
class ProgressiveLog:
    """What :func:`progressive_prune` did: ``alive`` (surviving candidate indices per slot), per stage the
    ``scores`` it gave and the ``dropped`` candidates per slot, and ``evaluated`` (candidate scorings per
    stage, summed over slots)."""

    alive: list
    scores: list = field(default_factory=list)
    dropped: list = field(default_factory=list)
    evaluated: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"alive": self.alive, "scores": self.scores, "dropped": self.dropped, "evaluated": self.evaluated}


def progressive_prune(slots: Sequence[int], stages: int,
                      score: Callable[[int, list], Sequence[Sequence[float]]], *, keep: float = 0.5,
                      final_keep: int | None = None) -> ProgressiveLog:
    """Score and cut the candidates of every slot stage by stage (see the module docstring).

    ``slots[k]``: how many candidates slot ``k`` starts with; ``score(stage, alive)`` returns one score per
    surviving candidate of every slot (``alive[k]`` lists them; higher is better); after each stage every slot
    keeps ``ceil(keep * alive)`` of its best (ties: the lower index), after the last stage ``final_keep`` when
    given (e.g. 1: the chosen candidate).
    """
    if not 0 < keep <= 1:
        raise ConfigError(f"keep={keep!r} must be in (0, 1]: the fraction of a slot's candidates a stage keeps")
    if not isinstance(stages, int) or stages < 1:
        raise ConfigError(f"stages={stages!r} must be an int >= 1")
    if any(int(n) < 1 for n in slots):
        raise ConfigError(f"slots={list(slots)!r}: every slot needs at least one candidate")
    log = ProgressiveLog(alive=[list(range(int(n))) for n in slots])
    for s in range(stages):
        got = [list(map(float, v)) for v in score(s, [list(a) for a in log.alive])]
        if len(got) != len(log.alive) or any(len(g) != len(a) for g, a in zip(got, log.alive)):
            raise ConfigError(f"score(stage={s}) must return one score per surviving candidate of every slot "
                              f"({[len(a) for a in log.alive]}); got {[len(g) for g in got]}")
        log.scores.append(got)
        log.evaluated.append(sum(len(a) for a in log.alive))
        last = s == stages - 1
        new, dropped = [], []
        for a, g in zip(log.alive, got):
            n = final_keep if (last and final_keep is not None) else max(1, math.ceil(keep * len(a) - 1e-9))
            order = sorted(range(len(a)), key=lambda j: (-g[j], a[j]))
            kept = sorted(a[j] for j in order[:max(1, n)])
            new.append(kept)
            dropped.append([c for c in a if c not in kept])
        log.alive, log.dropped = new, log.dropped + [dropped]
    return log


def class_curriculum(difficulty: Sequence[float], sizes: Sequence[int]) -> list:
    """Classes of each stage, easiest first: ``difficulty[c]`` (lower is easier, e.g. the error of a cheap
    classifier on class ``c``) orders the classes, and stage ``s`` takes the ``sizes[s]`` easiest (sizes grow;
    the last is usually every class).

    Example:
        >>> class_curriculum([0.3, 0.1, 0.5, 0.2], [2, 4])
        [[1, 3], [0, 1, 2, 3]]
    """
    n = len(difficulty)
    sizes = [int(k) for k in sizes]
    if not sizes or any(not 1 <= k <= n for k in sizes) or any(b < a for a, b in zip(sizes, sizes[1:])):
        raise ConfigError(f"curriculum sizes={sizes!r} must grow and lie in [1, {n}] (classes per stage), "
                          f"e.g. (4, {n})")
    order = sorted(range(n), key=lambda c: (float(difficulty[c]), c))
    return [sorted(order[:k]) for k in sizes]
