"""Allocation: how many channels each group loses, from scores and a budget.

``allocate_uniform`` cuts the same fraction from every group; ``allocate_global`` ranks normalised
scores across groups; ``per_layer`` overrides apply per group; ``search_target`` finds the sparsity whose
exact cost (params or MACs, from the graph's cost model) meets a ``target``, and ``fill_to_budget`` then
gives single channels (or ``round_to`` units) back, group by group, so the cost lands on the budget rather
than one ratio step below it. ``allocate_to_target`` is the whole path used by ``pk.plan`` and the
training-time methods' cut; ``layer_sparsities``/``erk_densities`` are the per-layer weight budgets of
``sparsify_``. All respect ``round_to`` (kept widths are multiples of it, unless the whole width is kept)
and ``min_channels``. :mod:`prunekit.allocate.bayesopt` searches a few hyper-parameters (per-layer ratios)
by constrained Bayesian optimisation (optuna, the ``search`` extra).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from ..criteria import normalise, select_lowest
from ..errors import ConfigError
from .._registry import closest
from ..recipe import parse_target as parse

__all__ = ["kept_width", "allocate_uniform", "allocate_global", "search_target", "select_removal",
           "parse_target", "fill_to_budget", "kept_at", "allocate_to_target", "ALLOCATIONS", "erk_densities",
           "layer_sparsities", "check_allocation", "global_keep_masks", "bisect_decreasing"]

ALLOCATIONS = ("uniform", "global")  # channel allocations; ``sparsify_`` adds "erk" for weights


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
                    fixed: dict | None = None, *, normalise_by: str | None = "mean",
                    room: bool = False) -> list:
    """Kept width per group when the lowest ``sparsity`` fraction of all channels (scores normalised per
    group by their mean; ``normalise_by=None`` ranks the raw scores) goes. ``fixed`` maps group index ->
    kept width decided elsewhere (overrides). ``room``: a group at ``min_channels`` drops out of the ranking,
    so exactly that many channels go (else the ranking's picks in a full group are kept back)."""
    fixed = fixed or {}
    free = [i for i in range(len(scores)) if i not in fixed]
    if not free:
        return [fixed[i] for i in range(len(scores))]
    allv = np.concatenate([normalise(np.asarray(scores[i], float), normalise_by) if normalise_by else
                           np.asarray(scores[i], float) for i in free])
    gid = np.concatenate([np.full(len(scores[i]), i) for i in free])
    n_remove = int(math.floor(len(allv) * sparsity + 1e-9))
    order = np.argsort(allv, kind="stable")
    if room:  # drop the channels a group at its minimum width cannot give, then take the first n_remove
        pos = np.empty(len(order), np.int64)
        for i in free:
            mine = order[gid[order] == i]
            pos[mine] = np.arange(len(mine))
        limit = np.array([max(len(scores[i]) - min_channels, 0) if i in free else 0 for i in range(len(scores))])
        order = order[pos[order] < limit[gid[order]]]
    order = order[:n_remove]
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


def check_allocation(allocation) -> str | None:
    """The problem with ``allocation`` (None when it is one of :data:`ALLOCATIONS`)."""
    if allocation in ALLOCATIONS:
        return None

    hint = closest(str(allocation), list(ALLOCATIONS))
    return (f"allocation={allocation!r} is not valid" + (f"; did you mean {hint!r}?" if hint else "") +
            f"; choose one of {', '.join(map(repr, ALLOCATIONS))}")


def kept_at(widths: list, scores: list, sparsity: float, *, allocation: str = "uniform", round_to: int = 1,
            min_channels: int = 1, fixed: dict | None = None, normalise_by: str | None = "mean",
            room: bool = False) -> list:
    """Kept width per group at ``sparsity``: the same fraction from every group (``"uniform"``) or one
    ranking of the scores over all groups (``"global"``). ``fixed`` maps group index -> its own sparsity
    (per-layer overrides), which global allocation leaves out of the ranking."""
    fixed = fixed or {}
    if allocation == "global":
        kept = {i: kept_width(widths[i], s, round_to, min_channels) for i, s in fixed.items()}
        return allocate_global(scores, sparsity, round_to, min_channels, kept, normalise_by=normalise_by, room=room)
    return allocate_uniform(widths, [fixed.get(i, sparsity) for i in range(len(widths))], round_to, min_channels)


def _step_up(kept: int, width: int, round_to: int) -> int:
    """The next kept width above ``kept``: one channel, or the next multiple of ``round_to`` (or the whole width)."""
    if round_to <= 1:
        return kept + 1
    return min(width, (kept // round_to + 1) * round_to)


def _step_down(kept: int, width: int, round_to: int, min_channels: int) -> int | None:
    """The next kept width below ``kept`` (None when ``min_channels`` or ``round_to`` forbids one)."""
    step = kept - 1 if round_to <= 1 else ((kept - 1) // round_to) * round_to
    return step if step >= max(min_channels, 1) else None


def _fill(kept: list, widths: list, cost_of, budget, round_to: int, frozen: set, cap: list) -> tuple[list, int]:
    kept = list(kept)
    cur = cost_of(kept)
    while cur < budget:
        best = None
        for i, k in enumerate(kept):
            if i in frozen or k >= cap[i]:
                continue
            step = _step_up(k, widths[i], round_to)
            if step > cap[i]:
                continue
            trial = kept.copy()
            trial[i] = step
            c = cost_of(trial)
            if cur < c <= budget and (best is None or c > best[0]):
                best = (c, i, step)
        if best is None:
            break
        cur, i, step = best
        kept[i] = step
    return kept, cur


def fill_to_budget(kept: list, widths: list, cost_of: Callable[[list], int], budget: float, *,
                   round_to: int = 1, frozen=(), max_kept: list | None = None, min_channels: int = 1,
                   tolerance: float = 0.01) -> list:
    """Give channels back to groups while the cost stays within ``budget``.

    One ratio for every group moves the cost in jumps (a ResNet-20 asked for 0.215 of its MACs lands at 0.192):
    each step here adds one channel (or one ``round_to`` unit) to the group whose step brings the cost closest
    to the budget without passing it, until no step fits. When that still ends more than ``tolerance`` below
    the budget (coarse ``round_to`` units), one group gives a unit back and the others are filled again; the
    closest result wins. Groups in ``frozen`` (per-layer overrides) keep their width; ``max_kept`` caps a
    group (channels that must go). Which channels come back is the criterion's business: the kept width
    grows, and the selection keeps the highest-scoring channels.
    """
    cap = list(widths) if max_kept is None else [min(w, m) for w, m in zip(widths, max_kept)]
    frozen = set(frozen)
    kept, cur = _fill(kept, widths, cost_of, budget, round_to, frozen, cap)
    if cur >= budget * (1 - tolerance):
        return kept
    best = (cur, kept)
    for i, k in enumerate(kept):
        down = None if i in frozen else _step_down(k, widths[i], round_to, min_channels)
        if down is None:
            continue
        trial = kept.copy()
        trial[i] = down
        trial, c = _fill(trial, widths, cost_of, budget, round_to, frozen | {i}, cap)
        if c > best[0]:
            best = (c, trial)
    return best[1]


def allocate_to_target(widths: list, scores: list, cost_of: Callable[[list], int], budget: float, *,
                       allocation: str = "uniform", round_to: int = 1, min_channels: int = 1,
                       fixed: dict | None = None, normalise_by: str | None = "mean", room: bool = False,
                       forced: list | None = None, hi: float = 0.999, fill: bool = True) -> tuple[list, float]:
    """Kept widths whose cost is within ``budget`` and as close to it as the granularity allows.

    The sparsity is found by bisection on :func:`kept_at` (``cost_of(kept)`` is the exact cost of the kept
    widths), then :func:`fill_to_budget` closes the gap group by group (``fill=False``: the bisection's
    allocation as it is, e.g. a global cut that must stay a prefix of one ranking). ``forced[i]``: channels
    group ``i`` loses whatever the budget (dead or masked channels); the removal is never smaller. Returns
    ``(kept, sparsity)``; raises ConfigError when even ``hi`` does not reach the budget.
    """
    fixed = fixed or {}

    def at(s):
        kept = kept_at(widths, scores, s, allocation=allocation, round_to=round_to, min_channels=min_channels,
                       fixed=fixed, normalise_by=normalise_by, room=room)
        if forced is not None:
            kept = [min(k, w - f) for k, w, f in zip(kept, widths, forced)]
        return kept

    s = search_target(lambda s: cost_of(at(s)), budget, hi=hi)
    if not fill:
        return at(s), s
    max_kept = None if forced is None else [w - f for w, f in zip(widths, forced)]
    kept = fill_to_budget(at(s), widths, cost_of, budget, round_to=round_to, frozen=fixed, max_kept=max_kept,
                          min_channels=min_channels)
    return kept, s


def erk_densities(shapes: dict, density: float) -> dict:
    """Erdős–Rényi-Kernel densities: ``d_l ∝ sum(shape) / prod(shape)``, scaled so the kept-weight count
    equals ``density`` of the total; layers that would exceed 1 are kept dense and the rest re-scaled."""
    numel = {k: math.prod(s) for k, s in shapes.items()}
    raw = {k: sum(s) / math.prod(s) for k, s in shapes.items()}
    dense: set = set()
    while True:
        budget = density * sum(numel.values()) - sum(numel[k] for k in dense)
        free = {k: raw[k] * numel[k] for k in shapes if k not in dense}
        eps = budget / sum(free.values()) if free else 0.0
        over = [k for k in free if eps * raw[k] > 1.0]
        if not over:
            return {k: 1.0 if k in dense else eps * raw[k] for k in shapes}
        dense.update(over)


def layer_sparsities(shapes: dict, sparsity: float, per_layer: dict, allocation: str,
                     matches: Callable[[str, str], bool]) -> dict:
    """Per-weight sparsity for ``sparsify_``: ``sparsity`` everywhere (``"uniform"``) or ERK-scaled
    (``"erk"``, same kept-weight count), ``per_layer`` entries (``matches(key, fqn)``) overriding."""
    out = {}
    for fqn in shapes:
        s = sparsity
        for key, value in per_layer.items():
            if matches(key, fqn):
                s = value
        out[fqn] = s
    if allocation == "erk":
        numel = {k: math.prod(v) for k, v in shapes.items()}
        free = {k: tuple(v) for k, v in shapes.items() if out[k] == sparsity}
        if free:
            fixed_kept = sum((1 - out[k]) * numel[k] for k in shapes if k not in free)
            total = sum(numel.values())
            free_numel = sum(numel[k] for k in free)
            density = ((1 - sparsity) * total - fixed_kept) / free_numel
            if not 0 <= density <= 1:
                raise ConfigError(f"allocation='erk': the per-layer entries leave no feasible density for the "
                                  f"other layers (needed {density:.3f}); loosen per_layer or sparsity={sparsity}")
            for k, d in erk_densities(free, density).items():
                out[k] = 1.0 - d
    return out


def global_keep_masks(scores: Sequence[torch.Tensor], n_keep: int, *, normalize: bool = False,
                      min_keep: int = 1) -> list[torch.Tensor]:
    """Boolean keep-masks over several layers from one global ranking: the ``n_keep`` highest scores survive.

    ``normalize`` divides each layer's scores by their mean first (so layers of different scale and width
    compete fairly); every layer keeps at least ``min_keep`` filters, which may push the kept total above ``n_keep``.
    """
    flat = []
    for layer, s in enumerate(scores):
        s = s.detach().float()
        if normalize:
            s = s / s.abs().mean().clamp_min(1e-12)
        flat.append(s)
    allv = torch.cat(flat)
    order = torch.sort(allv, descending=True, stable=True).indices
    keep = torch.zeros_like(allv, dtype=torch.bool)
    keep[order[:n_keep]] = True
    masks, start = [], 0
    for s in flat:
        m = keep[start : start + len(s)].clone()
        if int(m.sum()) < min_keep:
            m[torch.sort(s, descending=True, stable=True).indices[:min_keep]] = True
        masks.append(m)
        start += len(s)
    return masks


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


def bisect_decreasing(cost_at: Callable[[float], float], budget: float, lo: float, hi: float, *,
                      steps: int = 60, log: bool = False) -> float:
    """Smallest ``x`` in ``[lo, hi]`` (to ``steps`` halvings) with ``cost_at(x) <= budget``, for a cost that
    falls as ``x`` grows (e.g. PFP's error ``eps`` against the kept params/MACs). ``log=True`` halves on a
    log scale (``lo > 0``), for a knob spanning many decades.

    Raises ConfigError when even ``hi`` does not meet the budget.

    Example:
        >>> round(bisect_decreasing(lambda x: 10 - x, 4.0, 0.0, 10.0), 6)
        6.0
    """
    if log and lo <= 0:
        raise ConfigError(f"bisect_decreasing: lo={lo!r} must be > 0 with log=True")
    if cost_at(hi) > budget:
        raise ConfigError(f"target cannot be reached: at the far end of the search ({hi:g}) the cost is still "
                          f"{cost_at(hi):,} > budget {budget:,}; ask for a larger fraction kept")
    if cost_at(lo) <= budget:
        return lo
    a, b = (math.log(lo), math.log(hi)) if log else (lo, hi)
    for _ in range(steps):
        mid = (a + b) / 2
        if cost_at(math.exp(mid) if log else mid) <= budget:
            b = mid
        else:
            a = mid
    return math.exp(b) if log else b
