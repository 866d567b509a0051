"""Size on disk of a model's ``state_dict``: dense (safetensors), sparse, and compressed.

Sparse format (prunekit's own, defined here so the number is exact and reproducible): an 8-byte
little-endian header length, a JSON header ``{name: {"dtype", "shape", "enc", "nnz"}}`` (written with
``separators=(",", ":")``), then per tensor, in ``state_dict`` order, the cheapest of three encodings of
its floating-point values:

* ``dense``: all ``numel`` values;
* ``bitmap``: the ``nnz`` non-zero values, then a bitmap of ``ceil(numel / 8)`` bytes;
* ``coo``: the ``nnz`` non-zero values, then their flat positions as unsigned ints of the smallest width
  that holds ``numel - 1`` (1, 2, 4 or 8 bytes).

Ties go to the earlier encoding in that list; integer tensors (e.g. BN's ``num_batches_tracked``) are
always dense. ``compressed`` is that byte string through ``zlib`` (level 6, its default) or ``lzma``
(preset 6).
"""
from __future__ import annotations

import json
import lzma
import struct
import zlib

import numpy as np
import torch
import torch.nn as nn

from .._registry import unknown_name_message
from ..errors import ConfigError

__all__ = ["size_on_disk", "encode_sparse", "dense_bytes", "KINDS"]

KINDS = ("dense", "sparse", "compressed")
CODECS = ("zlib", "lzma")
_DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
                torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                torch.bool: "BOOL"}


def _state(model_or_state) -> dict[str, torch.Tensor]:
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else dict(model_or_state)
    out, seen = {}, set()
    for name, t in state.items():
        t = t.detach()
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype) if t.numel() else None
        if key is not None and key in seen:  # tied tensors are stored once, as safetensors requires
            continue
        if key is not None:
            seen.add(key)
        out[name] = t.cpu().contiguous()
    return out


def dense_bytes(model_or_state) -> bytes:
    """The ``state_dict`` as a safetensors file (tied tensors once)."""
    from safetensors.torch import save

    return save({k: v.clone() for k, v in _state(model_or_state).items()})


def _index_width(numel: int) -> int:
    for width in (1, 2, 4):
        if numel - 1 < 256 ** width:
            return width
    return 8


def _np(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy()  # raw bytes of the bf16 values
    return t.numpy()


def encode_sparse(model_or_state) -> bytes:
    """The sparse byte string described in this module's docstring.

    Example:
        >>> lin = nn.Linear(16, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = lin.weight.zero_()
        ...     lin.weight[0, 3] = 1.0
        >>> blob = encode_sparse(lin)
        >>> blob[-5:] == struct.pack("<f", 1.0) + bytes([3])  # one float32 value, one 1-byte position
        True
    """
    header, chunks = {}, []
    for name, t in _state(model_or_state).items():
        flat = _np(t.reshape(-1))
        numel, isz = flat.size, flat.dtype.itemsize
        if not (t.is_floating_point() or t.is_complex()) or numel == 0:
            enc, nnz, chunk = "dense", numel, flat.tobytes()
        else:
            nz = np.flatnonzero(t.reshape(-1).numpy() != 0) if t.dtype != torch.bfloat16 else np.flatnonzero(
                t.reshape(-1).float().numpy() != 0)
            nnz = int(nz.size)
            iw = _index_width(numel)
            costs = {"dense": numel * isz, "bitmap": nnz * isz + -(-numel // 8), "coo": nnz * isz + nnz * iw}
            enc = min(costs, key=lambda k: (costs[k], list(costs).index(k)))
            if enc == "dense":
                chunk = flat.tobytes()
            else:
                values = flat[nz].tobytes()
                if enc == "bitmap":
                    mask = np.zeros(numel, dtype=bool)
                    mask[nz] = True
                    chunk = values + np.packbits(mask).tobytes()
                else:
                    chunk = values + nz.astype({1: "<u1", 2: "<u2", 4: "<u4", 8: "<u8"}[iw]).tobytes()
        header[name] = {"dtype": _DTYPE_NAMES.get(t.dtype, str(t.dtype)), "shape": list(t.shape), "enc": enc,
                        "nnz": nnz}
        chunks.append(chunk)
    head = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)


def size_on_disk(model: nn.Module, kind: str = "dense", *, codec: str = "zlib") -> int:
    """Bytes to store ``model``'s ``state_dict``: ``dense`` (a safetensors file), ``sparse`` (non-zero values
    plus compact indices, see the module docstring) or ``compressed`` (the sparse bytes through ``codec``).

    Example:
        >>> size_on_disk(nn.Linear(3, 2))  # 8-byte length + 120-byte JSON header + 8 float32 values
        160
    """
    if kind not in KINDS:
        raise ConfigError(unknown_name_message("size kind", kind, KINDS, "kind"))
    if codec not in CODECS:
        raise ConfigError(unknown_name_message("codec", codec, CODECS, "codec"))
    if kind == "dense":
        return len(dense_bytes(model))
    blob = encode_sparse(model)
    if kind == "sparse":
        return len(blob)
    return len(zlib.compress(blob, 6) if codec == "zlib" else lzma.compress(blob, preset=6))
