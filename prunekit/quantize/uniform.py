"""Uniform quantisers with a straight-through estimator, fixed or learned step, and CLIP-Q's clip-and-partition.

Three pieces the quantising methods share:

* :func:`ste_round` rounds in the forward pass and passes the gradient through unchanged (the straight-through
  estimator, Bengio et al. 2013): a quantised forward whose backward reaches the full-precision values.
* :func:`uniform_quantize` maps ``x`` to the symmetric grid ``step * {-n, ..., n}`` clipped at ``qmax``; with a
  tensor ``step``/``qmax`` that requires grad the gradients reach them (LSQ, Esser et al. 2020: ``d/d step`` of
  ``step * round(x / step)`` is ``round(x / step) - x / step`` inside the range), and :func:`bits_for` gives the
  bit-width the pair implies (Uhlich et al. 2020: ``b = log2(qmax / step + 1) + 1`` for a signed grid), which is
  differentiable in both, so a loss on bits (BOPs) trains them. :class:`FakeQuant` wraps this as a module.
* :func:`clip_partition` is CLIP-Q's quantiser (Tung & Mori 2018): the fraction ``p`` of values nearest zero is
  clipped to 0, the rest of the value range is split into ``2^b - 1`` equal bins, and each value becomes the mean
  of its bin; it returns the quantised tensor and the kept mask.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["ste_round", "uniform_quantize", "bits_for", "FakeQuant", "clip_partition", "quantize_to_bits"]


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, identity backward.

    Example:
        >>> x = torch.tensor([0.4, 1.6], requires_grad=True)
        >>> y = ste_round(x); y.sum().backward()
        >>> y.tolist(), x.grad.tolist()
        ([0.0, 2.0], [1.0, 1.0])
    """
    return _RoundSTE.apply(x)


def uniform_quantize(x: torch.Tensor, step, qmax) -> torch.Tensor:
    """``step * round(clamp(x, -qmax, qmax) / step)`` with the straight-through estimator on the rounding.

    Gradients reach ``x`` inside ``[-qmax, qmax]`` (zero outside), ``step`` (``round(x/step) - x/step`` there) and
    ``qmax`` (``sign(x)`` outside), as in LSQ and Uhlich et al.'s parametrisation.

    Example:
        >>> uniform_quantize(torch.tensor([-2.0, -0.26, 0.1, 0.74]), 0.5, 1.0).tolist()
        [-1.0, -0.5, 0.0, 0.5]
    """
    qmax = torch.as_tensor(qmax, dtype=x.dtype, device=x.device)
    c = torch.maximum(torch.minimum(x, qmax), -qmax)
    return ste_round(c / step) * step


def bits_for(step, qmax) -> torch.Tensor:
    """Bit-width of the signed grid ``step * {-n..n}`` with ``n = qmax / step``: ``log2(n + 1) + 1`` (Uhlich et
    al. 2020, eq. for the "good parametrisation"); differentiable, real-valued (round up to store).

    Example:
        >>> float(bits_for(torch.tensor(1.0), torch.tensor(7.0)))
        4.0
    """
    step, qmax = torch.as_tensor(step), torch.as_tensor(qmax)
    return torch.log2(qmax / step + 1) + 1


def quantize_to_bits(x: torch.Tensor, bits: int, qmax: float | None = None) -> torch.Tensor:
    """Symmetric uniform quantisation of ``x`` to ``bits`` bits (``2^(bits-1) - 1`` levels each side of zero),
    range ``qmax`` (default ``max |x|``). No gradient tricks: for storage.

    Example:
        >>> quantize_to_bits(torch.tensor([-1.0, 0.2, 0.6, 1.0]), 2).tolist()
        [-1.0, 0.0, 1.0, 1.0]
    """
    if not isinstance(bits, int) or bits < 2:
        raise ConfigError(f"bits={bits!r}: a signed uniform grid needs bits >= 2 (an int)")
    qmax = float(x.detach().abs().max()) if qmax is None else float(qmax)
    if qmax <= 0:
        return torch.zeros_like(x)
    n = 2 ** (bits - 1) - 1
    step = qmax / n
    return torch.round(x.clamp(-qmax, qmax) / step) * step


class FakeQuant(nn.Module):
    """A uniform fake-quantiser for weights or activations: ``uniform_quantize(x, step, qmax)``.

    ``learn="none"``: fixed ``bits`` over the range given to :meth:`init_from` (max |x|). ``"step"``: the step is a
    parameter (LSQ), ``qmax`` fixed. ``"step_qmax"``: both are parameters and the bit-width follows from them
    (Uhlich et al. 2020; DJPQ); :attr:`bits` is then real-valued and :meth:`stored_bits` rounds it up.
    ``signed=False`` quantises non-negative inputs (after a ReLU) on ``{0..n}``; its bits are ``log2(n + 1)``.
    """

    def __init__(self, bits: float = 8, *, learn: str = "none", signed: bool = True):
        super().__init__()
        if learn not in ("none", "step", "step_qmax"):
            raise ConfigError(f"learn={learn!r}: choose 'none', 'step' (LSQ) or 'step_qmax' (learned bit-width)")
        if not (isinstance(bits, (int, float)) and bits >= (2 if signed else 1)):
            raise ConfigError(f"bits={bits!r}: need >= 2 for a signed grid, >= 1 for an unsigned one")
        self.learn, self.signed, self.init_bits = learn, signed, float(bits)
        self.log_step = nn.Parameter(torch.zeros(()), requires_grad=learn != "none")
        self.log_qmax = nn.Parameter(torch.zeros(()), requires_grad=learn == "step_qmax")

    def _levels(self, bits: float) -> float:
        return 2 ** (bits - 1) - 1 if self.signed else 2 ** bits - 1

    @torch.no_grad()
    def init_from(self, x: torch.Tensor) -> "FakeQuant":
        """Range = max |x| (or max x, unsigned), step = range / levels of :attr:`init_bits`."""
        qmax = float(x.detach().abs().max().clamp_min(1e-8))
        self.log_qmax.fill_(math.log(qmax))
        self.log_step.fill_(math.log(qmax / self._levels(self.init_bits)))
        return self

    @property
    def step(self) -> torch.Tensor:
        return self.log_step.exp()

    @property
    def qmax(self) -> torch.Tensor:
        return self.log_qmax.exp()

    @property
    def bits(self) -> torch.Tensor:
        """Bits implied by (step, qmax): differentiable; for a signed grid ``log2(qmax/step + 1) + 1``."""
        n = self.qmax / self.step
        return torch.log2(n + 1) + (1 if self.signed else 0)

    def stored_bits(self) -> int:
        """The integer bit-width a store of this grid needs (``ceil`` of :attr:`bits`, at least 1 or 2)."""
        return max(2 if self.signed else 1, math.ceil(float(self.bits.detach()) - 1e-6))

    @torch.no_grad()
    def snap_(self) -> "FakeQuant":
        """Make the grid exactly ``stored_bits()`` wide: keep qmax, step = qmax / levels (for export)."""
        self.log_step.fill_(math.log(float(self.qmax.detach()) / self._levels(self.stored_bits())))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.signed:
            return uniform_quantize(x, self.step, self.qmax)
        c = torch.minimum(x.clamp_min(0), self.qmax)
        return ste_round(c / self.step) * self.step


def clip_partition(w: torch.Tensor, p: float, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP-Q's clip-then-quantise of one layer: ``(quantised, kept)``.

    Clipping: the ``round(p * n)`` values of smallest magnitude (the interval around zero holding a fraction
    ``p`` of the weights) become 0. Partitioning: the range ``[min, max]`` of the remaining values is split into
    ``2^bits - 1`` equal-width bins (linear partitioning; one code of the ``2^bits`` is the zero), and each value
    is replaced by the mean of the values in its bin. So the result has exactly ``round(p * n)`` zeros and at
    most ``2^bits - 1`` distinct non-zero values.

    Example:
        >>> q, kept = clip_partition(torch.tensor([0.05, -0.1, 1.0, 1.2, 3.0, -2.0]), 1 / 3, 2)
        >>> [round(v, 3) for v in q.tolist()], kept.tolist()
        ([0.0, 0.0, 1.1, 1.1, 3.0, -2.0], [False, False, True, True, True, True])
    """
    if not (0 <= p < 1):
        raise ConfigError(f"p={p!r}: the clipped fraction must be in [0, 1)")
    if not isinstance(bits, int) or bits < 1:
        raise ConfigError(f"bits={bits!r}: need an int >= 1 (2^bits - 1 bins)")
    flat = w.detach().flatten()
    n_clip = int(round(p * flat.numel()))
    kept = torch.ones_like(flat, dtype=torch.bool)
    if n_clip:
        kept[flat.abs().argsort(stable=True)[:n_clip]] = False
    out = torch.zeros_like(flat)
    vals = flat[kept]
    if vals.numel():
        bins = 2 ** bits - 1
        lo, hi = vals.min(), vals.max()
        width = (hi - lo) / bins
        idx = ((vals - lo) / width).floor().clamp(0, bins - 1).long() if float(width) > 0 else torch.zeros_like(
            vals, dtype=torch.long)
        sums = torch.zeros(bins, dtype=vals.dtype, device=vals.device).index_add_(0, idx, vals)
        counts = torch.zeros(bins, dtype=vals.dtype, device=vals.device).index_add_(0, idx, torch.ones_like(vals))
        out[kept] = (sums / counts.clamp_min(1))[idx]
    return out.view_as(w), kept.view_as(w)
