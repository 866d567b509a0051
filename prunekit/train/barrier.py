"""A barrier term for a resource budget, and a budget lowered progressively during training.

A barrier keeps a resource ``V`` (expected MACs, activation volume, ...) below a budget ``b`` without a hard
projection: the term is small far below the budget and grows without bound as ``V`` approaches it, so its
gradient (``1 / (b - V)`` for the log-barrier) pushes harder the closer the constraint is. Beyond
``(1 - margin) * b`` it continues as its tangent line, so a start above the budget (or a noisy step over it)
gives a large, finite push back instead of a NaN. Used by BAR (Lemaire et al., CVPR 2019).
"""
from __future__ import annotations

import math

import torch

from ..errors import ConfigError

__all__ = ["log_barrier", "progressive_budget"]


def log_barrier(v: torch.Tensor, budget: float, margin: float = 0.01) -> torch.Tensor:
    """``-log(1 - v / budget)`` for ``v < (1 - margin) * budget``, its tangent line beyond (finite, increasing).

    Zero at ``v = 0``; its derivative ``1 / (budget - v)`` grows as ``v`` approaches the budget.

    Example:
        >>> round(float(log_barrier(torch.tensor(0.5), 1.0)), 4)  # -log(0.5)
        0.6931
    """
    if not budget > 0:
        raise ConfigError(f"budget={budget!r}: a barrier needs a positive budget")
    if not 0 < margin < 1:
        raise ConfigError(f"margin={margin!r}: must be in (0, 1)")
    v = torch.as_tensor(v)
    knee = (1 - margin) * budget
    inside = -torch.log1p(-torch.clamp(v, max=knee) / budget)
    slope = 1.0 / (budget - knee)
    return torch.where(v < knee, inside, -math.log(margin) + slope * (v - knee))


def progressive_budget(step: int, total_steps: int, start: float, end: float, ramp: float = 0.5) -> float:
    """The budget at ``step``: from ``start`` down to ``end`` over the first ``ramp`` share of ``total_steps``
    along a smooth S-curve (3t^2 - 2t^3), then ``end``.

    Example:
        >>> [progressive_budget(step, 100, 1.0, 0.25) for step in (0, 25, 60)]
        [1.0, 0.625, 0.25]
    """
    if total_steps <= 0 or ramp <= 0:
        return float(end)
    t = min(max(step / (ramp * total_steps), 0.0), 1.0)
    s = 3 * t * t - 2 * t * t * t
    return float(start + (end - start) * s)
