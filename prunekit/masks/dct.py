"""Conv kernels in the 2-D DCT basis, and masks on the DCT coefficients (frequency-domain pruning, FDDP).

A ``k x k`` kernel ``W`` has coefficients ``C = D W D^T`` with ``D`` the orthonormal DCT-II matrix, so
``W = D^T C D`` exactly and ``||C|| = ||W||``. A mask ``M`` on ``C`` acts on the kernel through the projection
``P_M(W) = D^T ((D W D^T) * M) D``. Frequency band of coefficient ``(u, v)``: ``u + v`` (0 = the DC term).
"""
from __future__ import annotations

import math

import torch

__all__ = ["dct_matrix", "dct2", "idct2", "band_index", "project"]


def dct_matrix(k: int, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``D`` (``[k, k]``, ``D @ D.T = I``); row ``u`` is frequency ``u``.

    Example:
        >>> d = dct_matrix(4)
        >>> bool(torch.allclose(d @ d.T, torch.eye(4, dtype=d.dtype)))
        True
    """
    n = torch.arange(k, dtype=dtype, device=device)
    d = torch.cos(math.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * k)) * math.sqrt(2 / k)
    d[0] /= math.sqrt(2)
    return d


def _mats(w: torch.Tensor):
    kh, kw = w.shape[-2], w.shape[-1]
    return (dct_matrix(kh, device=w.device), dct_matrix(kw, device=w.device))


def dct2(w: torch.Tensor) -> torch.Tensor:
    """DCT coefficients of every kernel (the last two dims) of ``w`` (computed in float64, returned in w's dtype)."""
    dh, dw = _mats(w)
    return (dh @ w.double() @ dw.T).to(w.dtype)


def idct2(c: torch.Tensor) -> torch.Tensor:
    """Kernels from their DCT coefficients (the inverse of :func:`dct2`)."""
    dh, dw = _mats(c)
    return (dh.T @ c.double() @ dw).to(c.dtype)


def band_index(kh: int, kw: int | None = None) -> torch.Tensor:
    """``[kh, kw]`` long tensor of the band ``u + v`` of each coefficient."""
    kw = kh if kw is None else kw
    return torch.arange(kh)[:, None] + torch.arange(kw)[None, :]


def project(w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``P_M(w)``: the kernels with their DCT coefficients outside ``mask`` removed."""
    return idct2(dct2(w) * mask.to(w.dtype))
