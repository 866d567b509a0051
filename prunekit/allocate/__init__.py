"""Allocation: how many channels each group loses, from scores and a budget.

``allocate_uniform`` cuts the same fraction from every group; ``allocate_global`` ranks normalised
scores across groups; ``per_layer`` overrides apply per group; ``search_target`` finds the sparsity whose
exact cost (params or MACs, from the graph's cost model) meets a ``target``. All respect ``round_to``
(kept widths are multiples of it, unless the whole width is kept) and ``min_channels``.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ..criteria import normalise, select_lowest
from ..errors import ConfigError

__all__ = ["kept_width", "allocate_uniform", "allocate_global", "search_target", "select_removal",
           "parse_target"]


def kept_width(width: int, sparsity: float, round_to: int = 1, min_channels: int = 1) -> int:
    """Channels a group of ``width`` keeps at ``sparsity`` (fraction removed).

    Example:
        >>> kept_width(64, 0.5), kept_width(10, 0.5, round_to=4), kept_width(3, 0.9)
        (32, 8, 1)
    """
    keep = width - int(math.floor(width * sparsity + 1e-9))
    if round_to > 1 and keep < width:
        keep = min(width, int(math.ceil(keep / round_to) * round_to))
    return int(min(width, max(keep, min_channels)))


def allocate_uniform(widths: list, sparsities: list, round_to: int = 1, min_channels: int = 1) -> list:
    """Kept width per group for per-group sparsities."""
    return [kept_width(w, s, round_to, min_channels) for w, s in zip(widths, sparsities)]


def allocate_global(scores: list, sparsity: float, round_to: int = 1, min_channels: int = 1,
                    fixed: dict | None = None) -> list:
    """Kept width per group when the lowest ``sparsity`` fraction of all channels (scores normalised per
    group by their mean) goes. ``fixed`` maps group index -> kept width decided elsewhere (overrides)."""
    fixed = fixed or {}
    free = [i for i in range(len(scores)) if i not in fixed]
    if not free:
        return [fixed[i] for i in range(len(scores))]
    allv = np.concatenate([normalise(np.asarray(scores[i], float), "mean") for i in free])
    gid = np.concatenate([np.full(len(scores[i]), i) for i in free])
    n_remove = int(math.floor(len(allv) * sparsity + 1e-9))
    order = np.argsort(allv, kind="stable")[:n_remove]
    removed = np.bincount(gid[order], minlength=len(scores))
    out = []
    for i, s in enumerate(scores):
        if i in fixed:
            out.append(fixed[i])
            continue
        w = len(s)
        keep = w - int(removed[i])
        if round_to > 1 and keep < w:
            keep = min(w, int(math.ceil(keep / round_to) * round_to))
        out.append(int(min(w, max(keep, min_channels))))
    return out


def select_removal(scores: list, kept: list) -> dict:
    """``{group index: channels to remove}``: the lowest-scoring channels beyond each kept width."""
    return {i: select_lowest(np.asarray(s), len(s) - k) for i, (s, k) in enumerate(zip(scores, kept))
            if len(s) - k > 0}


def parse_target(target: str) -> tuple[str, float]:
    """A structured budget from the one target grammar (:func:`prunekit.recipe.parse_target`): ``"macs=0.5"``
    -> ``("macs", 0.5)``, the fraction of MACs (or params) the pruned model keeps; ``"sparsity=0.9"`` (the
    fraction of parameters removed) -> ``("params", 0.1)``.

    Example:
        >>> parse_target("macs=0.5"), parse_target("sparsity=0.75")
        (('macs', 0.5), ('params', 0.25))
    """
    from ..recipe import parse_target as parse

    kind, value = parse(target)
    if kind == "sparsity":
        return "params", 1.0 - value
    return kind, value


def search_target(cost_at: Callable[[float], int], budget: int, *, hi: float = 0.999, steps: int = 30) -> float:
    """Smallest sparsity whose cost is within ``budget`` (bisection; cost falls as sparsity grows).

    Raises ConfigError when even ``hi`` does not reach the budget.
    """
    c_hi = cost_at(hi)
    if c_hi > budget:
        raise ConfigError(f"target cannot be reached: removing everything prunable still leaves {c_hi:,} > "
                          f"budget {budget:,}; ask for a larger fraction kept, lower min_channels/round_to, "
                          f"or remove entries from ignore")
    if cost_at(0.0) <= budget:
        return 0.0
    lo = 0.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        if cost_at(mid) <= budget:
            hi = mid
        else:
            lo = mid
    return hi
