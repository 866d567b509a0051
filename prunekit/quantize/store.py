"""What a quantised model really costs: the bits each layer uses, and the size of a packed file on disk.

:func:`bits_used` counts, per weight tensor, the distinct non-zero values and the zeros, and gives the bits an
index into its codebook needs (``ceil(log2(distinct))``; a layer with more than ``2^16`` distinct values is
called full precision, 32 bits). :func:`save_packed` writes a model in a plain packed format — per quantised
tensor a bitmap of the non-zero positions, the codebook as float32 and one ``b``-bit index per non-zero weight
(bit-packed) when that is smaller than float32, every other tensor as raw float32 — and :func:`load_packed` reads it back bit-exactly;
:func:`packed_size` is the byte size of that file as written (``os.path.getsize``), not an estimate.
"""
from __future__ import annotations

import json
import math
import os
import struct
import tempfile

import numpy as np
import torch
from torch import nn

__all__ = ["bits_used", "save_packed", "load_packed", "packed_size", "pack_bits", "unpack_bits", "MAX_CODEBOOK"]

MAX_CODEBOOK = 2 ** 16  # more distinct values than this: stored as raw float32


def pack_bits(values: np.ndarray, width: int) -> bytes:
    """Unsigned ints ``< 2^width`` packed MSB-first, ``width`` bits each (the last byte zero-padded).

    Example:
        >>> pack_bits(np.array([1, 2, 3]), 2).hex()
        '6c'
    """
    values = np.asarray(values, dtype=np.int64)
    if width == 0 or values.size == 0:
        return b""
    bits = (values[:, None] >> np.arange(width - 1, -1, -1)) & 1
    return np.packbits(bits.astype(np.uint8).flatten()).tobytes()


def unpack_bits(data: bytes, width: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` ints of ``width`` bits."""
    if width == 0 or count == 0:
        return np.zeros(count, dtype=np.int64)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:count * width].reshape(count, width)
    return (bits.astype(np.int64) << np.arange(width - 1, -1, -1)).sum(1)


def _is_weight(name: str, t: torch.Tensor) -> bool:
    return name.endswith("weight") and t.dim() >= 2 and t.is_floating_point()


def bits_used(model: nn.Module) -> dict[str, dict]:
    """Per conv/linear weight: ``{"distinct": non-zero values, "bits": index bits, "zeros": fraction zero,
    "numel": n}``; ``bits`` is ``ceil(log2(distinct))`` (at least 1), 32 for a full-precision layer.

    Example:
        >>> m = nn.Linear(4, 2, bias=False)
        >>> with torch.no_grad(): _ = m.weight.copy_(torch.tensor([[0., 1., 1., -1.], [0., 0., 2., 1.]]))
        >>> bits_used(m)["weight"]
        {'distinct': 3, 'bits': 2, 'zeros': 0.375, 'numel': 8}
    """
    out = {}
    for name, t in model.state_dict().items():
        if not _is_weight(name, t):
            continue
        nz = t.detach()[t != 0]
        distinct = int(torch.unique(nz).numel())
        bits = 32 if distinct > MAX_CODEBOOK else max(1, math.ceil(math.log2(max(distinct, 1))))
        out[name] = {"distinct": distinct, "bits": bits, "zeros": float((t == 0).float().mean()),
                     "numel": t.numel()}
    return out


def save_packed(model: nn.Module, path: str | os.PathLike) -> int:
    """Write ``model``'s state_dict packed (see the module docstring); returns the file's size in bytes."""
    header, body = {"packed": {}, "raw": {}}, bytearray()
    for name, t in model.state_dict().items():
        t = t.detach().cpu()
        if _is_weight(name, t):
            nz_mask = (t != 0).flatten().numpy()
            values, index = torch.unique(t.flatten()[t.flatten() != 0].float(), return_inverse=True)
            bitmap = book = idx = b""
            if values.numel() <= MAX_CODEBOOK:
                width = max(1, math.ceil(math.log2(max(values.numel(), 1))))
                bitmap = np.packbits(nz_mask.astype(np.uint8)).tobytes()
                book = values.numpy().astype("<f4").tobytes()
                idx = pack_bits(index.numpy(), width)
            if values.numel() <= MAX_CODEBOOK and len(bitmap) + len(book) + len(idx) < 4 * t.numel():
                header["packed"][name] = [list(t.shape), str(t.dtype), len(body), len(bitmap), values.numel(),
                                          width, len(idx), int(nz_mask.sum())]
                body += bitmap + book + idx
                continue
        header["raw"][name] = [list(t.shape), str(t.dtype), len(body)]
        body += t.float().numpy().astype("<f4").tobytes()
    head = json.dumps(header, separators=(",", ":")).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<I", len(head)) + head + bytes(body))
    return os.path.getsize(path)


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name.replace("torch.", ""))


def load_packed(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state_dict written by :func:`save_packed` (each tensor in its saved dtype)."""
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<I", blob[:4])[0]
    header = json.loads(blob[4:4 + n])
    body = blob[4 + n:]
    out = {}
    for name, (shape, dtype, o, n_map, k, width, n_idx, nnz) in header["packed"].items():
        numel = int(np.prod(shape))
        nz = np.unpackbits(np.frombuffer(body[o:o + n_map], dtype=np.uint8))[:numel].astype(bool)
        o += n_map
        book = np.frombuffer(body[o:o + 4 * k], dtype="<f4")
        o += 4 * k
        idx = unpack_bits(body[o:o + n_idx], width, nnz)
        flat = np.zeros(numel, dtype=np.float32)
        flat[nz] = book[idx]
        out[name] = torch.from_numpy(flat).reshape(shape).to(_dtype(dtype))
    for name, (shape, dtype, o) in header["raw"].items():
        count = int(np.prod(shape)) if shape else 1
        arr = np.frombuffer(body, dtype="<f4", count=count, offset=o).copy()
        out[name] = torch.from_numpy(arr).reshape(shape).to(_dtype(dtype))
    return out


def packed_size(model: nn.Module) -> int:
    """Bytes of the file :func:`save_packed` writes for ``model`` (written to a temporary file and measured)."""
    with tempfile.TemporaryDirectory() as d:
        return save_packed(model, os.path.join(d, "model.pkq"))
