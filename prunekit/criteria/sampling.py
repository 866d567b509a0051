"""Filter sensitivity sampling with importance weights (the building blocks of PFP, Liebenwein et al. 2020).

A layer ``l+1`` computes, at every output unit ``i`` and position, a sum over input channels ``j`` of
contributions ``w_ij * a_j(x)``. The *empirical sensitivity* of input channel ``j`` is the largest share its
contribution ever takes of that sum on a few sample inputs; sampling channels with probability proportional
to it and re-weighting each kept channel by ``count / (m p_j)`` keeps the layer's output unbiased, and the
number of draws ``m`` needed for a relative error ``eps`` with failure probability ``delta`` follows from the
sum of the sensitivities. Removing an input channel of layer ``l+1`` removes the filter of layer ``l``
producing it, so this prunes filters.

- :func:`empirical_sensitivity`: per-input-channel sensitivity of one Conv2d / Linear on recorded inputs.
  As in the authors' tracker, weights are split into their positive and negative parts, each part's share is
  taken against that part's own sum (``w+_ij a_j / sum_k w+_ik a_k``, same for ``w-``), negative activations
  are handled as a second input ``-min(a, 0)``, and the shares are reduced by ``max`` over positions, kernel
  taps, output units and inputs.
- :func:`sampling_probabilities`, :func:`log_term`, :func:`sample_complexity`, :func:`expected_unique`,
  :func:`draws_for_unique`: the sample-size arithmetic.
- :func:`sample_until_unique`, :func:`importance_weights`: drawing channels and their re-weighting.

Example:
    >>> sampling_probabilities(torch.tensor([0.5, 0.0, 1.5])).tolist()
    [0.25, 0.0, 0.75]
    >>> sample_complexity(1.0, 2.0)   # ceil(3 * (6 + 2) * 2 / 1)
    48
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

__all__ = ["empirical_sensitivity", "sampling_probabilities", "log_term", "sample_complexity", "expected_unique",
           "draws_for_unique", "sample_until_unique", "importance_weights", "K_CONSTANT"]

K_CONSTANT = 3.0  # the constant K of the sample complexity (authors' pfp_allocator: k_constant = 3)
_EPS = float(torch.finfo(torch.float32).eps)  # shares with a smaller denominator count as 0 (authors' tracker)


def _unfolded(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``[N, C*k, L]`` the rows the layer multiplies by its weight (Linear: ``[N, C, 1]``)."""
    if isinstance(module, nn.Conv2d):
        return F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
    return x.reshape(-1, x.shape[-1]).unsqueeze(-1)


def empirical_sensitivity(module: nn.Module, inputs, *, chunk: int = 128) -> tuple[torch.Tensor, int]:
    """``(sensitivity [C_in], positions L)`` of the input channels of ``module`` (Linear, or Conv2d with
    groups=1) over ``inputs`` (a tensor or a list of input tensors of the layer), float64 on the CPU.

    ``s_j = max_{x, i, position, tap} max(w+_ij a_j / z+_i, w-_ij a_j / z-_i)`` where ``z+-_i`` sums the
    positive / negative part of unit ``i``'s weights times its inputs (bias left out). A channel whose
    activations are always 0 gets sensitivity 0. Every factor is non-negative, so the maximum over inputs and
    positions is taken first, ``M[i, d] = max_rows a_d / z_i``, and multiplied by ``|w_id|`` afterwards.
    """
    if not (isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)):
        raise ConfigError(f"empirical_sensitivity: {type(module).__name__} is not a Linear or a Conv2d with "
                          f"groups=1")
    xs = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    w = module.weight.detach().float().cpu()
    out_ch = w.shape[0]
    wf = w.reshape(out_ch, -1)  # [O, C*k]
    c_in = module.in_channels if isinstance(module, nn.Conv2d) else module.in_features
    k = wf.shape[1] // c_in
    parts = [wf.clamp_min(0), -wf.clamp_max(0)]  # |w+|, |w-|: a share w-_ij a_j / z-_i is |w-_ij| a_j / |z-_i|
    best = [torch.zeros(wf.shape[1], out_ch) for _ in parts]  # M[d, i] per part
    positions = 1
    for x in xs:
        x = x.detach().float().cpu()
        for start in range(0, x.shape[0], 32):
            a = _unfolded(module, x[start:start + 32])  # [n, C*k, L]
            positions = a.shape[-1]
            rows_all = a.transpose(1, 2).reshape(-1, a.shape[1])  # [n*L, C*k]
            neg = rows_all.clamp_max(0)
            pieces = [rows_all.clamp_min(0)] + ([-neg] if bool((neg < 0).any()) else [])
            for rows in pieces:
                for wp, m in zip(parts, best):
                    z = rows @ wp.t()  # [R, O]
                    inv = torch.where(z.abs() <= _EPS, torch.zeros_like(z), 1.0 / z)
                    for r0 in range(0, rows.shape[0], chunk):
                        blk = rows[r0:r0 + chunk, :, None] * inv[r0:r0 + chunk, None, :]  # [r, C*k, O]
                        torch.maximum(m, blk.amax(0), out=m)
    sens = torch.zeros(c_in, dtype=torch.float64)
    for wp, m in zip(parts, best):
        g = (wp.t() * m).double()  # [C*k, O]
        sens = torch.maximum(sens, g.view(c_in, k, out_ch).amax(dim=(1, 2)))
    return sens, positions


def sampling_probabilities(sens: torch.Tensor) -> torch.Tensor:
    """``p_j = s_j / sum_k s_k`` (all zeros when every sensitivity is 0)."""
    sens = sens.double().clamp_min(0)
    total = float(sens.sum())
    return sens / total if total > _EPS else torch.zeros_like(sens)


def log_term(positions: int, kernel: int, delta: float, c: float = 3.0) -> float:
    """``2 c log(8 (positions + 1) kernel / delta)``: the factor the sum of sensitivities is multiplied by in
    the sample complexity (authors' SiPPRandAllocator, with ``kernel`` the taps of one channel's slice)."""
    if not 0 < delta < 1:
        raise ConfigError(f"delta={delta!r}: the failure probability must be in (0, 1), e.g. 1e-16")
    return 2.0 * c * math.log(8.0 * (positions + 1) * kernel / delta)


def sample_complexity(eps: float, coeff: float) -> int:
    """``m = ceil(K (6 + 2 eps) coeff / eps^2)`` draws for relative error ``eps`` (at least 1); ``coeff`` is the
    sum of sensitivities times :func:`log_term`."""
    if eps <= 0:
        raise ConfigError(f"eps={eps!r} must be > 0")
    if coeff <= 0:
        return 1
    log_m = math.log(K_CONSTANT * (6.0 + 2.0 * eps) * coeff) - 2.0 * math.log(eps)  # eps may be 1e-300
    return 2 ** 62 if log_m > 62 * math.log(2) else max(1, int(math.ceil(math.exp(log_m) - 1e-9)))


def expected_unique(prob: torch.Tensor, m: int) -> int:
    """``ceil(sum_j 1 - (1 - p_j)^m)``: the expected number of distinct channels in ``m`` draws."""
    p = prob.double()
    return int(math.ceil(float((1 - torch.pow(1 - p, float(m))).sum()) - 1e-9))


def draws_for_unique(prob: torch.Tensor, k: int) -> int:
    """The smallest ``m`` whose expected number of distinct channels reaches ``k`` (capped at the channels with
    a positive probability)."""
    live = int((prob > 0).sum())
    k = min(int(k), live)
    if k <= 1:
        return k
    lo, hi = 1, 1
    while expected_unique(prob, hi) < k:
        hi *= 2
        if hi > 2 ** 60:
            return hi
    while lo < hi:
        mid = (lo + hi) // 2
        if expected_unique(prob, mid) >= k:
            hi = mid
        else:
            lo = mid + 1
    return lo


def sample_until_unique(prob: torch.Tensor, k: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """Draw channels i.i.d. from ``prob`` until ``k`` distinct ones are drawn: ``(counts per channel, draws)``.
    A channel of probability 0 is never drawn; ``k`` is capped at the channels with a positive probability."""
    width = prob.numel()
    counts = torch.zeros(width, dtype=torch.long)
    target = min(int(k), int((prob > 0).sum()))
    m = 0
    seen = 0
    while seen < target:
        for d in torch.multinomial(prob.double(), 4 * width, replacement=True, generator=generator).tolist():
            counts[d] += 1
            m += 1
            if counts[d] == 1:
                seen += 1
                if seen >= target:
                    break
    return counts, m


def importance_weights(counts: torch.Tensor, m: int, prob: torch.Tensor) -> torch.Tensor:
    """``count_j / (m p_j)`` for drawn channels, 0 for the others: the re-weighting that keeps the sampled
    layer's output unbiased."""
    counts = counts.double()
    return torch.where(counts > 0, counts / (m * prob.double()).clamp_min(1e-300), torch.zeros_like(counts))
