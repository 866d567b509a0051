"""Constraint cooling (Chen et al., ECCV 2018): the constraint of each fine-pruning round, from loose to the target."""
from __future__ import annotations

import math

from ..errors import ConfigError

__all__ = ["cooled_constraint", "COOLING_SHAPES"]

COOLING_SHAPES = ("exponential", "linear", "one-step")


def cooled_constraint(step: int, *, final: float, initial: float, rounds: int, alpha: float = 0.5,
                      shape: str = "exponential") -> float:
    """The constraint of round ``step`` (0-based) of ``rounds``, tightening from ``initial`` (C0, the dense
    model's value) to ``final`` (C, the target); the last round's is exactly C.

    ``"exponential"`` (Newton's law of cooling, the paper's default):
    ``c_t = C + (C0 - C) e^{-alpha (t+1)} + (C - C0) e^{-alpha T}``; ``"linear"``:
    ``c_t = C0 + (t+1)/T (C - C0)``; ``"one-step"``: ``c_t = C`` from the first round (one round of
    constrained search under the target itself).

    Example:
        >>> [round(cooled_constraint(t, final=0.1, initial=1.0, rounds=3), 4) for t in range(3)]
        [0.4451, 0.2303, 0.1]
        >>> [round(cooled_constraint(t, final=0.1, initial=1.0, rounds=3, shape="linear"), 4) for t in range(3)]
        [0.7, 0.4, 0.1]
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds={rounds!r} must be an int >= 1 (fine-pruning rounds)")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < rounds:
        raise ConfigError(f"step={step!r} must be an int in [0, rounds={rounds})")
    if shape not in COOLING_SHAPES:
        raise ConfigError(f"shape={shape!r}: choose one of {', '.join(map(repr, COOLING_SHAPES))}")
    if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha > 0):
        raise ConfigError(f"alpha={alpha!r} must be a number > 0 (the cooling rate; paper: 0.5)")
    if shape == "one-step" or step == rounds - 1:
        return float(final)
    if shape == "linear":
        return float(initial + (step + 1) / rounds * (final - initial))
    return float(final + (initial - final) * math.exp(-alpha * (step + 1))
                 + (final - initial) * math.exp(-alpha * rounds))
