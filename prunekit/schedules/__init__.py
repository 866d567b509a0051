"""Schedules: pure functions ``(step, **params) -> sparsity`` and the callbacks that drive them.

Functions (no state, no model): :func:`one_shot`, :func:`at_init`, :func:`agp_cubic` (Zhu & Gupta),
:func:`geometric_rounds` (the one round schedule: Han et al., lottery tickets, LR rewinding),
:func:`dns_update_probability` (Dynamic Network Surgery), :func:`lr_rewind_factor` (Renda et al.),
:func:`cooled_constraint` (constraint cooling over fine-pruning rounds, Chen et al. 2018).

Callbacks for :func:`prunekit.train.fit` (imported lazily, they need :mod:`prunekit.train`):
``GradualPruning(schedule, **sparsify_kwargs)``, ``MaskUpdate(compute, frequency=, probability=)``
(dynamic masks, weights come back), ``RewindPoints(steps)`` (weights kept for rewinding),
``LRReplay(factor, base_lr)`` (learning-rate rewinding).

Example:
    >>> from prunekit.schedules import agp_cubic
    >>> agp_cubic(1000, final=0.9, start=0, n=10, frequency=100)
    0.9
"""
from __future__ import annotations

import importlib

from .cooling import COOLING_SHAPES, cooled_constraint
from .functions import agp_cubic, at_init, dns_update_probability, geometric_rounds, lr_rewind_factor, one_shot

__all__ = ["agp_cubic", "at_init", "dns_update_probability", "geometric_rounds", "lr_rewind_factor",
           "one_shot", "GradualPruning", "MaskUpdate", "RewindPoints", "LRReplay", "COOLING_SHAPES",
           "cooled_constraint"]

_CALLBACKS = ("GradualPruning", "MaskUpdate", "RewindPoints", "LRReplay")


def __getattr__(name: str):
    if name in _CALLBACKS:
        return getattr(importlib.import_module(f"{__name__}.callbacks"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
