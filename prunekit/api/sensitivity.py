"""Sensitivity analysis (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017): prune each layer
alone at growing sparsities, evaluate without retraining, and give sensitive layers smaller sparsities.

:func:`sensitivity_curves` measures the curves (a JSON-ready dict a report can plot);
:func:`ratios_for_drop` reads per-layer sparsities off them for an accepted accuracy drop;
:func:`ratios_for_target` finds the smallest accepted drop whose sparsities meet a MAC/parameter target.
The result plugs into ``pk.plan(..., per_layer=ratios)``.
"""
from __future__ import annotations

import copy
import logging
import math
from typing import Callable

from torch import nn

from .._registry import closest
from ..allocate import parse_target
from ..errors import ConfigError
from .applying import prune_
from .inspection import inspect
from .planning import plan

__all__ = ["sensitivity_curves", "ratios_for_drop", "ratios_for_target", "DEFAULT_SPARSITIES"]

log = logging.getLogger(__name__)

DEFAULT_SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _layers(model: nn.Module, example_inputs, ignore) -> list:
    """One key per prunable group: the module FQN of its first producer (a ``per_layer`` key)."""
    keys = []
    for g in inspect(model, example_inputs, ignore=ignore).groups:
        prods = g.producers or g.members
        mf = prods[0].fqn.rpartition(".")[0]
        if mf and mf not in keys:
            keys.append(mf)
    return keys


def sensitivity_curves(model: nn.Module, example_inputs, evaluate: Callable[[nn.Module], float], *,
                       criterion: str = "l1", sparsities=DEFAULT_SPARSITIES, layers=None, calib=None,
                       ignore=(), reduce: str = "producer", seed: int = 0) -> dict:
    """Accuracy of ``model`` with each layer pruned alone at each sparsity (no retraining).

    ``evaluate(model) -> float`` scores a copy (higher = better). Returns
    ``{"criterion", "sparsities", "baseline", "layers": {fqn: [score per sparsity]}, "macs": {fqn: [kept
    MAC fraction per sparsity]}}``; ``model`` is not changed.

    Example:
        >>> import torch
        >>> from prunekit.testing import models
        >>> m, x = models()["chain"]()
        >>> c = sensitivity_curves(m, x, lambda mm: -float(mm(x).detach().abs().sum()), sparsities=(0.5,))
        >>> sorted(c)
        ['baseline', 'criterion', 'layers', 'macs', 'sparsities']
    """
    sparsities = [float(s) for s in sparsities]
    bad = [s for s in sparsities if not 0 < s < 1]
    if not sparsities or bad:
        raise ConfigError(f"sparsities={sparsities!r}: each must be in (0, 1), the fraction of a layer's channels "
                          f"removed, e.g. sparsities=(0.1, 0.2, ..., 0.9)")
    if not callable(evaluate):
        raise ConfigError(f"evaluate={evaluate!r} must be a function model -> score (e.g. accuracy)")
    all_layers = _layers(model, example_inputs, ignore)
    if layers is None:
        layers = all_layers
    unknown = [f for f in layers if f not in all_layers]
    if unknown:
        hint = closest(unknown[0], all_layers)
        raise ConfigError(f"layers={unknown!r}: not prunable layers of the model" +
                          (f"; did you mean {hint!r}?" if hint else "") + f" Prunable: {all_layers}")
    baseline = float(evaluate(model))
    curves: dict = {}
    macs: dict = {}
    for f in layers:
        curves[f], macs[f] = [], []
        for s in sparsities:
            m = copy.deepcopy(model)
            rep = prune_(m, example_inputs=example_inputs, per_layer={f: s}, criterion=criterion, calib=calib,
                         ignore=list(ignore), reduce=reduce, seed=seed)
            curves[f].append(float(evaluate(m)))
            macs[f].append(rep.macs_after / max(rep.macs_before, 1))
        log.info("sensitivity %s: %s", f, curves[f])
    return {"criterion": criterion, "sparsities": sparsities, "baseline": baseline, "layers": curves, "macs": macs}


def ratios_for_drop(curves: dict, max_drop: float) -> dict:
    """``{fqn: sparsity}``: per layer, the largest measured sparsity whose score stays within ``max_drop`` of
    the baseline at it and at every smaller sparsity (0 when even the first one drops more).

    Example:
        >>> c = {"baseline": 0.9, "sparsities": [0.25, 0.5], "layers": {"a": [0.9, 0.5], "b": [0.89, 0.88]}}
        >>> ratios_for_drop(c, 0.02)
        {'a': 0.25, 'b': 0.5}
    """
    out = {}
    for f, accs in curves["layers"].items():
        r = 0.0
        for s, a in zip(curves["sparsities"], accs):
            if curves["baseline"] - a > max_drop + 1e-9:
                break
            r = s
        out[f] = r
    return out


def ratios_for_target(model: nn.Module, example_inputs, curves: dict, target: str, *, ignore=(),
                      criterion: str | None = None, calib=None) -> tuple[dict, float]:
    """Per-layer sparsities from ``curves`` that meet ``target`` (e.g. ``"macs=0.5"``) with the smallest
    accepted accuracy drop. Returns ``(ratios, max_drop)``; raises ConfigError when even the largest
    measured sparsities miss the target.
    """
    kind, frac = parse_target(target)
    criterion = criterion or curves["criterion"]
    cache: dict = {}

    def kept(drop: float) -> float:
        r = {f: s for f, s in ratios_for_drop(curves, drop).items() if s > 0}
        key = tuple(sorted(r.items()))
        if key not in cache:
            if not r:
                cache[key] = 1.0
            else:
                p = plan(model, example_inputs, per_layer=r, criterion=criterion, calib=calib, ignore=list(ignore))
                cache[key] = p.predicted[f"{kind}_after"] / max(p.predicted[f"{kind}_before"], 1)
        return cache[key]

    drops = sorted({max(curves["baseline"] - a, 0.0) for accs in curves["layers"].values() for a in accs})
    hi = math.inf
    if kept(hi) > frac:
        raise ConfigError(f"target={target!r} cannot be met from the sensitivity curves: with every layer at its "
                          f"largest measured sparsity ({max(curves['sparsities'])}) the model keeps "
                          f"{kept(hi):.3f} of its {kind}; measure larger sparsities, prune more layers, or ask "
                          f"for a larger fraction kept")
    lo, hi_i = 0, len(drops) - 1
    while lo < hi_i:  # smallest accepted drop that meets the target (kept falls as the drop grows)
        mid = (lo + hi_i) // 2
        if kept(drops[mid]) <= frac:
            hi_i = mid
        else:
            lo = mid + 1
    drop = drops[lo] if drops and kept(drops[lo]) <= frac else math.inf
    return {f: s for f, s in ratios_for_drop(curves, drop).items() if s > 0}, float(drop)
