"""XOR-gate weight encryption: a fixed-to-fixed code for pruned, binary-code-quantised weights.

After Kwon et al., "Structured Compression by Weight Encryption for Unstructured Pruning and Quantization",
CVPR 2020 (https://arxiv.org/abs/1905.10138). Each weight is quantised with multi-bit binary codes
(``w ~ sum_b alpha_b * s_b`` with ``s_b in {-1, +1}``), giving one bit-plane per bit. A bit-plane is cut into
slices of ``n_out`` bits; the decoder is a fixed random XOR network, a binary matrix ``M`` of ``n_out x n_in``
over GF(2), that turns an ``n_in``-bit code ``x`` into ``y = M x (mod 2)``. Bits at pruned positions are
"don't care": the encoder only has to match the care bits, i.e. solve ``M[care] x = y[care]`` over GF(2). When
no ``x`` matches them all, the care bits the best ``x`` gets wrong are stored as patches (their positions in
the slice), so decoding plus patches reproduces every care bit exactly. Every slice costs the same ``n_in``
bits, so the decoder runs at a fixed rate.

Encoders: ``search="exhaustive"`` tries every one of the ``2^n_in`` codes (the paper's look-up table of all
input/output pairs) and keeps one with the fewest patches; ``search="solve"`` adds the care equations one at
a time to a GF(2) row-echelon basis and turns each equation inconsistent with the ones before into a patch
(any ``n_in``; not always the fewest patches). Patch storage (ours, the paper does not fix a layout): one flag
bit per slice, and for a flagged slice a patch count and the patch positions, ``ceil(log2(n_out + 1))`` and
``ceil(log2 n_out)`` bits each.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError

__all__ = ["xor_matrix", "xor_decode", "gf2_solve", "encode_plane", "decode_plane", "EncodedPlane",
           "binary_codes", "binary_quantize", "XorCode", "xor_encode_tensor", "xor_decode_tensor"]


def xor_matrix(n_out: int, n_in: int, seed: int = 0) -> np.ndarray:
    """A fixed random binary matrix ``[n_out, n_in]`` (each entry 0/1 with probability 1/2), seeded.

    Example:
        >>> xor_matrix(4, 2, seed=0).shape
        (4, 2)
    """
    if not (isinstance(n_in, int) and isinstance(n_out, int) and 1 <= n_in < n_out):
        raise ConfigError(f"n_in={n_in!r}, n_out={n_out!r}: the XOR decoder needs ints with 1 <= n_in < n_out")
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2, size=(n_out, n_in), dtype=np.uint8)


def xor_decode(codes: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``y = M x (mod 2)`` for each row ``x`` of ``codes [s, n_in]``: ``[s, n_out]`` bits.

    Example:
        >>> xor_decode(np.array([[1, 1]]), np.array([[1, 0], [0, 1], [1, 1]])).tolist()
        [[1, 1, 0]]
    """
    return (codes.astype(np.int64) @ m.T.astype(np.int64)) % 2


def gf2_solve(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Solve ``a x = b`` over GF(2) equation by equation: ``(x, skipped)``, ``skipped`` the rows that were
    inconsistent with the rows before them (``x`` satisfies every other row). Free variables are 0.

    Example:
        >>> x, bad = gf2_solve(np.array([[1, 0], [0, 1], [1, 1]]), np.array([1, 1, 1]))
        >>> x.tolist(), bad
        ([1, 1], [2])
    """
    n = a.shape[1]
    basis: dict[int, tuple[int, int]] = {}  # pivot bit -> (row bits, rhs)
    skipped = []
    for i in range(a.shape[0]):
        row = int("".join(str(int(v)) for v in a[i]), 2) if n else 0
        rhs = int(b[i])
        for pivot in sorted(basis, reverse=True):
            if row >> pivot & 1:
                prow, prhs = basis[pivot]
                row ^= prow
                rhs ^= prhs
        if row == 0:
            if rhs:
                skipped.append(i)
            continue
        basis[row.bit_length() - 1] = (row, rhs)
    x = 0
    for pivot in sorted(basis):  # back substitution, lowest pivot first (free variables stay 0)
        row, rhs = basis[pivot]
        rest = row & ~(1 << pivot)
        if bin(rest & x).count("1") % 2 != rhs:
            x |= 1 << pivot
    bits = np.array([(x >> (n - 1 - j)) & 1 for j in range(n)], dtype=np.uint8)
    return bits, skipped


@dataclass
class EncodedPlane:
    """One encoded bit-plane: ``codes [s, n_in]`` and the patches, ``(slice, position)`` pairs."""

    codes: np.ndarray
    patches: list
    n_out: int
    length: int  # bits of the plane before padding to whole slices

    def bits(self) -> int:
        """Stored bits: codes, one flag per slice, and per patched slice a count and the positions."""
        s, n_in = self.codes.shape
        count_bits, pos_bits = math.ceil(math.log2(self.n_out + 1)), math.ceil(math.log2(self.n_out))
        patched = len({p[0] for p in self.patches})
        return s * n_in + s + patched * count_bits + len(self.patches) * pos_bits


def _slices(bits: np.ndarray, n_out: int) -> np.ndarray:
    pad = (-len(bits)) % n_out
    return np.concatenate([bits, np.zeros(pad, dtype=bits.dtype)]).reshape(-1, n_out)


def encode_plane(bits: np.ndarray, care: np.ndarray, m: np.ndarray, *, search: str = "exhaustive",
                 chunk: int = 4096) -> EncodedPlane:
    """Encode a flat bit-plane ``bits`` (0/1) whose positions with ``care`` False may decode to anything."""
    n_out, n_in = m.shape
    y, c = _slices(bits.astype(np.uint8), n_out), _slices(care.astype(np.uint8), n_out)
    codes = np.zeros((len(y), n_in), dtype=np.uint8)
    if search == "exhaustive":
        if n_in > 16:
            raise ConfigError(f"n_in={n_in}: the exhaustive table has 2^n_in entries; use search='solve'")
        table_x = ((np.arange(2 ** n_in)[:, None] >> np.arange(n_in - 1, -1, -1)) & 1).astype(np.uint8)
        table_y = xor_decode(table_x, m).astype(np.float32)  # [K, n_out]
        for lo in range(0, len(y), chunk):
            yy, cc = y[lo:lo + chunk].astype(np.float32), c[lo:lo + chunk].astype(np.float32)
            wrong = (cc * yy) @ (1 - table_y).T + (cc * (1 - yy)) @ table_y.T  # [s, K] care bits mismatched
            codes[lo:lo + chunk] = table_x[wrong.argmin(1)]
    elif search == "solve":
        for i in range(len(y)):
            rows = np.nonzero(c[i])[0]
            codes[i], _ = gf2_solve(m[rows], y[i, rows])
    else:
        raise ConfigError(f"search={search!r}: choose 'exhaustive' (look-up table) or 'solve' (GF(2) elimination)")
    dec = xor_decode(codes, m)
    wrong = np.argwhere((dec != y) & (c == 1))
    return EncodedPlane(codes, [tuple(int(v) for v in p) for p in wrong], n_out, len(bits))


def decode_plane(enc: EncodedPlane, m: np.ndarray) -> np.ndarray:
    """The flat bit-plane: ``M x`` per slice, patched bits flipped, cut to the original length."""
    y = xor_decode(enc.codes, m).astype(np.uint8)
    for s, j in enc.patches:
        y[s, j] ^= 1
    return y.flatten()[:enc.length]


def binary_codes(w: torch.Tensor, mask: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-bit binary-code quantisation, greedy (Guo et al. 2017; the quantiser the paper builds on): per
    output row, ``alpha_b = mean |r|`` of the kept residual and ``s_b = sign(r)``, ``r -= alpha_b s_b``.
    Returns ``(alphas [rows, bits], signs [bits, *w.shape] in {0, 1} for -1/+1)``; pruned positions are
    ignored (their signs are don't-care).

    Example:
        >>> a, s = binary_codes(torch.tensor([[0.5, -1.5, 0.0]]), torch.tensor([[True, True, False]]), 1)
        >>> a.tolist(), s[0, 0, :2].tolist()
        ([[1.0]], [1, 0])
    """
    rows = w.detach().reshape(w.shape[0], -1).float()
    keep = mask.reshape(w.shape[0], -1)
    r = torch.where(keep, rows, torch.zeros_like(rows))
    alphas, signs = [], []
    for _ in range(bits):
        s = torch.where(r >= 0, 1.0, -1.0)
        a = (r.abs() * keep).sum(1) / keep.sum(1).clamp_min(1)
        r = torch.where(keep, r - a[:, None] * s, r)
        alphas.append(a)
        signs.append((s > 0).to(torch.uint8).reshape(w.shape))
    return torch.stack(alphas, 1), torch.stack(signs)


def binary_quantize(w: torch.Tensor, mask: torch.Tensor, bits: int) -> torch.Tensor:
    """``w`` quantised with :func:`binary_codes` (``sum_b alpha_b s_b`` at kept positions, 0 elsewhere).

    Example:
        >>> binary_quantize(torch.tensor([[0.5, -1.5, 0.2]]), torch.tensor([[True, True, False]]), 1).tolist()
        [[1.0, -1.0, 0.0]]
    """
    alphas, signs = binary_codes(w, mask, bits)
    return _reconstruct(alphas, signs, mask.to(w.device)).to(w.dtype)


def _reconstruct(alphas: torch.Tensor, signs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    pm = signs.float() * 2 - 1  # [bits, rows, ...]
    shape = [alphas.shape[0]] + [1] * (pm.dim() - 2)
    w = sum(alphas[:, b].reshape(shape) * pm[b] for b in range(alphas.shape[1]))
    return torch.where(mask, w, torch.zeros_like(w))


@dataclass
class XorCode:
    """One encrypted tensor: per bit-plane an :class:`EncodedPlane`, the scales, the mask and the shape."""

    planes: list
    alphas: torch.Tensor
    mask: torch.Tensor
    shape: tuple

    def code_bits(self) -> int:
        """Bits of the encrypted planes (codes + patch data): the paper's measure."""
        return sum(p.bits() for p in self.planes)

    def patches(self) -> int:
        return sum(len(p.patches) for p in self.planes)


def xor_encode_tensor(w: torch.Tensor, mask: torch.Tensor, m: np.ndarray, *, bits: int = 1,
                      search: str = "exhaustive") -> tuple[XorCode, torch.Tensor]:
    """Binary-code quantise ``w`` at the kept positions and encrypt each bit-plane with ``m``: ``(code,
    quantised)``, ``quantised`` the pruned, quantised tensor the code decodes to."""
    alphas, signs = binary_codes(w, mask, bits)
    care = mask.flatten().cpu().numpy()
    planes = [encode_plane(signs[b].flatten().cpu().numpy(), care, m, search=search) for b in range(bits)]
    return XorCode(planes, alphas, mask.clone(), tuple(w.shape)), _reconstruct(alphas, signs, mask).to(w.dtype)


def xor_decode_tensor(code: XorCode, m: np.ndarray) -> torch.Tensor:
    """The weight tensor: decode each plane (care bits exact after patches), zero at pruned positions."""
    signs = torch.stack([torch.from_numpy(decode_plane(p, m).astype(np.uint8)).reshape(code.shape)
                         for p in code.planes])
    return _reconstruct(code.alphas, signs, code.mask)
