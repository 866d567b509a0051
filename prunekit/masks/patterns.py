"""Sparsity patterns: which groups of weights are kept or pruned together.

Every pattern works on the 2-D view of a weight, ``W.reshape(out, -1)``: rows are output units (neurons,
filters), columns the inputs (``in * kh * kw`` for a conv, the order im2col uses, so the same view feeds
the sparse kernels in :mod:`prunekit.masks.sparse`). A pattern cuts the view into *units* (single weights,
blocks, rows, columns) and says how many weights each unit holds; the allocation picks the units to prune.
N:M is different: its sparsity is fixed (``1 - N/M``) and it keeps the N largest scores of every group of M
consecutive columns.

Pattern strings: ``"element"``, ``"row"``, ``"column"``, ``"N:M"`` (``"2:4"``, ``"4:8"``), ``"block:RxC"``
(``"block:1x4"``, ``"block:4x4"``). New families register with :func:`register_pattern` (``"darb:..."``).

Example:
    >>> import torch
    >>> from prunekit.masks.patterns import get_pattern
    >>> p = get_pattern("2:4")
    >>> p.select_fixed(torch.tensor([[4., 1., 3., 2.]])).int().tolist()
    [[1, 0, 1, 0]]
"""
from __future__ import annotations

import re
from typing import Callable

import torch

from .._registry import Registry, closest
from ..errors import ConfigError

__all__ = ["Pattern", "PATTERNS", "register_pattern", "get_pattern", "view2d"]


def view2d(t: torch.Tensor) -> torch.Tensor:
    """``[out, in*kh*kw]`` view of a weight (a 1-D tensor becomes one row)."""
    return t.reshape(1, -1) if t.dim() < 2 else t.reshape(t.shape[0], -1)


class Pattern:
    """A granularity. Subclasses define ``units``/``expand`` (or ``fixed_sparsity`` + ``select_fixed``)."""

    spec: str = ""
    fixed_sparsity: float | None = None  # set by patterns whose sparsity is implied (N:M)

    def problems(self, shape2d: tuple[int, int]) -> list[str]:
        """Why this pattern cannot apply to a ``[rows, cols]`` view (empty when it can)."""
        return []

    def units(self, scores2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-unit score (mean of its weights' scores) and size in weights, both ``[n_units]``."""
        raise NotImplementedError

    def expand(self, keep: torch.Tensor, shape2d: tuple[int, int]) -> torch.Tensor:
        """Weight mask ``[rows, cols]`` from the per-unit keep flags ``[n_units]``."""
        raise NotImplementedError

    def select_fixed(self, scores2d: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def check(self, mask2d: torch.Tensor) -> bool:
        """Whether a ``[rows, cols]`` mask obeys the pattern (used by tests and conversions)."""
        units, _ = self.units(mask2d.float())
        return bool(((units == 0) | (units == 1)).all())

    def __repr__(self) -> str:
        return f"Pattern({self.spec!r})"


class BlockPattern(Pattern):
    """Units are ``r x c`` tiles of the 2-D view; element = 1x1, row = 1xcols, column = rowsx1."""

    def __init__(self, spec: str, r: int | None, c: int | None):
        self.spec, self.r, self.c = spec, r, c

    def _rc(self, shape2d):
        return (self.r or shape2d[0]), (self.c or shape2d[1])

    def problems(self, shape2d):
        r, c = self._rc(shape2d)
        bad = []
        if shape2d[0] % r:
            bad.append(f"pattern={self.spec!r} needs the {shape2d[0]} rows to be a multiple of {r}")
        if shape2d[1] % c:
            bad.append(f"pattern={self.spec!r} needs the {shape2d[1]} columns (in*kh*kw) to be a multiple of {c}")
        return bad

    def units(self, scores2d):
        rows, cols = scores2d.shape
        r, c = self._rc((rows, cols))
        tiles = scores2d.reshape(rows // r, r, cols // c, c)
        score = tiles.mean(dim=(1, 3)).reshape(-1)
        return score, torch.full_like(score, float(r * c))

    def expand(self, keep, shape2d):
        rows, cols = shape2d
        r, c = self._rc(shape2d)
        grid = keep.reshape(rows // r, cols // c)
        return grid.repeat_interleave(r, 0).repeat_interleave(c, 1)


class NMPattern(Pattern):
    """N of every M consecutive weights along the input (column) dimension are kept."""

    def __init__(self, spec: str, n: int, m: int):
        self.spec, self.n, self.m = spec, n, m
        self.fixed_sparsity = 1.0 - n / m

    def problems(self, shape2d):
        if shape2d[1] % self.m:
            return [f"pattern={self.spec!r} needs the {shape2d[1]} columns (in*kh*kw) to be a multiple of "
                    f"M={self.m}; ignore this layer or choose an M that divides {shape2d[1]}"]
        return []

    def select_fixed(self, scores2d):
        rows, cols = scores2d.shape
        groups = scores2d.reshape(rows, cols // self.m, self.m)
        top = groups.topk(self.n, dim=-1).indices
        mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
        return mask.reshape(rows, cols)

    def check(self, mask2d):
        rows, cols = mask2d.shape
        return bool((mask2d.reshape(rows, cols // self.m, self.m).sum(-1) <= self.n).all())


PATTERNS: Registry[Callable[[str, str | None], Pattern]] = Registry("pattern")


_EXAMPLES = ["element", "row", "column", "2:4", "4:8", "block:1x4", "block:4x4"]


def register_pattern(family: str, *, example: str | None = None):
    """Register ``factory(spec, arg) -> Pattern`` for pattern strings ``"family"`` or ``"family:arg"``;
    ``example`` (e.g. ``"bmwm:4"``) is shown in error messages and exercised by the registry's contract tests."""
    if example is not None:
        _EXAMPLES.append(example)
    return PATTERNS.register(family)


@register_pattern("element")
def _element(spec, arg):
    return BlockPattern(spec, 1, 1)


@register_pattern("row")
def _row(spec, arg):
    return BlockPattern(spec, 1, None)


@register_pattern("column")
def _column(spec, arg):
    return BlockPattern(spec, None, 1)


@register_pattern("block")
def _block(spec, arg):
    hit = re.fullmatch(r"(\d+)x(\d+)", arg or "")
    if not hit or int(hit[1]) < 1 or int(hit[2]) < 1:
        raise ConfigError(f"pattern={spec!r}: a block pattern is 'block:RxC' with positive integers, "
                          f"e.g. 'block:1x4' or 'block:4x4'")
    return BlockPattern(spec, int(hit[1]), int(hit[2]))


@register_pattern("nm")
def _nm(spec, arg):
    n, m = (int(v) for v in arg.split(":"))
    if m < 2 or not 1 <= n < m:
        raise ConfigError(f"pattern={spec!r}: N:M needs 1 <= N < M (N kept out of every M), e.g. '2:4' or '4:8'")
    return NMPattern(spec, n, m)




def get_pattern(spec: str | Pattern) -> Pattern:
    """Parse a pattern string (or pass a :class:`Pattern` through)."""
    if isinstance(spec, Pattern):
        return spec
    if not isinstance(spec, str):
        raise ConfigError(f"pattern must be a string such as {_EXAMPLES}, got {spec!r}")
    if re.fullmatch(r"\d+:\d+", spec):
        return PATTERNS.get("nm")(spec, spec)
    family, _, arg = spec.partition(":")
    if family not in PATTERNS:  # some patterns (DARB's bmwm) are registered by their method's module
        from ..methods import load_all

        load_all()
    if family not in PATTERNS or family == "nm":
        choices = sorted(set(_EXAMPLES) | {f for f in PATTERNS.names() if f != "nm"})
        hint = closest(spec, choices)
        raise ConfigError(f"unknown pattern={spec!r}" + (f"; did you mean {hint!r}?" if hint else "") +
                          f" Valid patterns: {', '.join(choices)} (N:M and block sizes take any integers).")
    return PATTERNS.get(family)(spec, arg or None)
