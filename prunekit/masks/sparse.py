"""Sparse inference and compact storage for finalized (unmasked, zero-holding) models.

``to_sparse_(model, layout="csr")`` swaps each Linear / Conv2d (groups = 1) whose weight is sparse enough
for a module that keeps its weight as a real sparse tensor: CSR or BSR (``layout="bsr"``, ``blocksize``)
for CPU and GPU, or 2:4 semi-structured (``torch.sparse.to_sparse_semi_structured``, CUDA with fp16/bf16
only) — convolutions run as im2col (``unfold``) + a sparse matmul. ``to_dense_`` swaps them back, so the
model's ``state_dict`` keys are the dense ones again. ``save_sparse`` / ``load_sparse`` store a finalized
model compactly (CSR values + narrow integer indices in safetensors) and load it into the unmodified
dense architecture.

Example:
    >>> import torch, prunekit as pk
    >>> from prunekit.masks.sparse import to_sparse_, to_dense_
    >>> m = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    >>> _ = pk.sparsify_(m, sparsity=0.9); _ = pk.finalize_(m)
    >>> x = torch.randn(3, 32); ref = m(x)
    >>> sorted(to_sparse_(m)["converted"])
    ['0', '2']
    >>> torch.allclose(m(x), ref, atol=1e-5)
    True
    >>> sorted(to_dense_(m)) == ['0', '2'] and torch.allclose(m(x), ref, atol=1e-5)
    True
"""
from __future__ import annotations

import logging
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .._registry import unknown_name_message
from ..errors import CheckpointError, ConfigError
from . import _engine

log = logging.getLogger(__name__)

__all__ = ["SparseLinear", "SparseConv2d", "to_sparse_", "to_dense_", "save_sparse", "load_sparse", "LAYOUTS",
           "sparse_bytes"]

LAYOUTS = ("csr", "bsr", "semi_structured")


def _sparsify_tensor(w2d: torch.Tensor, layout: str, blocksize) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        if layout == "csr":
            return w2d.to_sparse_csr()
        if layout == "bsr":
            return w2d.to_sparse_bsr(tuple(blocksize))
        return torch.sparse.to_sparse_semi_structured(w2d)


def sparse_bytes(t: torch.Tensor) -> int:
    """Bytes held by a tensor's values and index arrays (dense: numel * itemsize)."""
    if t.layout in (torch.sparse_csr, torch.sparse_bsr):
        parts = [t.values(), t.crow_indices(), t.col_indices()]
        return sum(p.numel() * p.element_size() for p in parts)
    if hasattr(t, "packed") and t.packed is not None:  # semi-structured: packed values + metadata
        return sum(p.numel() * p.element_size() for p in (t.packed, t.meta) if p is not None)
    return t.numel() * t.element_size()


class SparseLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` held sparse (``[out, in]``)."""

    def __init__(self, linear: nn.Linear, layout: str = "csr", blocksize=(1, 4)):
        super().__init__()
        self.in_features, self.out_features, self.layout = linear.in_features, linear.out_features, layout
        self.weight = nn.Parameter(_sparsify_tensor(linear.weight.detach(), layout, blocksize), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.layout == "semi_structured":
            y = F.linear(x2, self.weight, self.bias)
        else:
            y = torch.sparse.mm(self.weight, x2.T).T  # [n, out]
            if self.bias is not None:
                y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def to_dense_module(self) -> nn.Linear:
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(self.weight.to_dense())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin


class SparseConv2d(nn.Module):
    """Conv2d (groups = 1) as ``unfold`` + sparse ``[out, in*kh*kw]`` matmul."""

    def __init__(self, conv: nn.Conv2d, layout: str = "csr", blocksize=(1, 4)):
        super().__init__()
        self.conv_args = dict(in_channels=conv.in_channels, out_channels=conv.out_channels,
                              kernel_size=conv.kernel_size, stride=conv.stride, padding=conv.padding,
                              dilation=conv.dilation)
        self.layout = layout
        w2d = conv.weight.detach().reshape(conv.out_channels, -1)
        self.weight = nn.Parameter(_sparsify_tensor(w2d, layout, blocksize), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv_args
        n, _, h, w = x.shape
        cols = F.unfold(x, a["kernel_size"], dilation=a["dilation"], padding=a["padding"], stride=a["stride"])
        # cols: [n, in*kh*kw, L] -> [in*kh*kw, n*L]
        flat = cols.transpose(0, 1).reshape(cols.shape[1], -1)
        if self.layout == "semi_structured":
            y = F.linear(flat.T, self.weight).T
        else:
            y = torch.sparse.mm(self.weight, flat)  # [out, n*L]
        ho = (h + 2 * a["padding"][0] - a["dilation"][0] * (a["kernel_size"][0] - 1) - 1) // a["stride"][0] + 1
        wo = (w + 2 * a["padding"][1] - a["dilation"][1] * (a["kernel_size"][1] - 1) - 1) // a["stride"][1] + 1
        y = y.reshape(a["out_channels"], n, ho, wo).transpose(0, 1)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y

    def to_dense_module(self) -> nn.Conv2d:
        conv = nn.Conv2d(**self.conv_args, bias=self.bias is not None)
        with torch.no_grad():
            conv.weight.copy_(self.weight.to_dense().reshape(conv.weight.shape))
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv


def _replace(model: nn.Module, fqn: str, new: nn.Module) -> None:
    parent_name, _, child = fqn.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _why_not(module: nn.Module, layout: str, blocksize, min_sparsity: float) -> str | None:
    w = module.weight.detach()
    sparsity = float((w == 0).float().mean())
    if sparsity < min_sparsity:
        return f"sparsity {sparsity:.3f} < min_sparsity {min_sparsity}"
    if isinstance(module, nn.Conv2d) and (module.groups != 1 or module.padding_mode != "zeros"
                                          or isinstance(module.padding, str)):
        return "grouped, string-padded or non-zero-padded conv (dense kept)"
    rows, cols = w.shape[0], w[0].numel()
    if layout == "bsr" and (rows % blocksize[0] or cols % blocksize[1]):
        return f"shape [{rows}, {cols}] is not a multiple of blocksize {tuple(blocksize)}"
    if layout == "semi_structured":
        if not w.is_cuda or w.dtype not in (torch.float16, torch.bfloat16):
            return "semi-structured sparsity needs a CUDA tensor in float16/bfloat16"
        if bool((w.reshape(rows, -1, 4) != 0).sum(-1).gt(2).any()):
            return "weight is not 2:4 sparse along the input dim (prune with pattern='2:4')"
    return None


def to_sparse_(model: nn.Module, *, layout: str = "csr", blocksize=(1, 4), min_sparsity: float = 0.0) -> dict:
    """Swap finalized Linear / Conv2d layers for sparse-weight modules; returns
    ``{"converted": {fqn: bytes}, "skipped": {fqn: reason}}``. The model must have no masks
    (``pk.finalize_`` first); inference only (weights do not train)."""
    if layout not in LAYOUTS:
        raise ConfigError(unknown_name_message("sparse layout", layout, LAYOUTS, "layout"))
    if _engine.is_masked(model):
        raise ConfigError("to_sparse_ converts finalized models: call pk.finalize_(model) first (masks are installed)")
    if not (len(tuple(blocksize)) == 2 and all(isinstance(b, int) and b > 0 for b in blocksize)):
        raise ConfigError(f"blocksize={blocksize!r} must be two positive ints (rows, cols), e.g. (1, 4)")
    converted, skipped = {}, {}
    targets = [(n, m) for n, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)]
    for fqn, module in targets:
        reason = _why_not(module, layout, blocksize, min_sparsity)
        if reason:
            skipped[fqn] = reason
            continue
        cls = SparseLinear if isinstance(module, nn.Linear) else SparseConv2d
        new = cls(module, layout, blocksize)
        _replace(model, fqn, new)
        converted[fqn] = sparse_bytes(new.weight)
    return {"converted": converted, "skipped": skipped}


def to_dense_(model: nn.Module) -> list[str]:
    """Swap sparse-weight modules back to nn.Linear / nn.Conv2d; returns the FQNs changed."""
    done = []
    for fqn, module in list(model.named_modules()):
        if isinstance(module, (SparseLinear, SparseConv2d)):
            _replace(model, fqn, module.to_dense_module())
            done.append(fqn)
    return done


def _narrow(t: torch.Tensor, limit: int) -> torch.Tensor:
    for dtype in (torch.int16, torch.int32):
        if limit < torch.iinfo(dtype).max:
            return t.to(dtype)
    return t.to(torch.int64)


def save_sparse(model: nn.Module, path: str | os.PathLike, *, min_sparsity: float = 0.5,
                dtype: torch.dtype = torch.float32) -> int:
    """Save a finalized model compactly: weights at least ``min_sparsity`` sparse as CSR (values + int16/int32
    indices), the rest dense, all in ``dtype``; returns the file size in bytes."""
    from safetensors.torch import save_file

    if _engine.is_masked(model):
        raise ConfigError("save_sparse stores finalized models: call pk.finalize_(model) first")
    tensors, meta = {}, {"format": "prunekit_sparse", "version": "1"}
    for name, t in model.state_dict().items():
        t = t.detach().cpu()
        if t.is_floating_point() and t.dim() >= 2 and float((t == 0).float().mean()) >= min_sparsity:
            w2d = t.reshape(t.shape[0], -1).to(dtype)
            csr = w2d.to_sparse_csr()
            tensors[f"{name}::values"] = csr.values().contiguous()
            tensors[f"{name}::crow"] = _narrow(csr.crow_indices(), csr.values().numel()).contiguous()
            tensors[f"{name}::col"] = _narrow(csr.col_indices(), w2d.shape[1]).contiguous()
            meta[f"shape:{name}"] = ",".join(map(str, t.shape))
        else:
            tensors[name] = (t.to(dtype) if t.is_floating_point() else t).contiguous()
    save_file(tensors, str(path), metadata=meta)
    return os.path.getsize(path)


def load_sparse(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a :func:`save_sparse` file into the dense architecture (strict: same keys and shapes)."""
    from safetensors import safe_open

    if not os.path.exists(path):
        raise CheckpointError(f"no sparse model file at path={str(path)!r}; write one with save_sparse(model, path)")
    state = {}
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != "prunekit_sparse":
            raise CheckpointError(f"path={str(path)!r} is not a prunekit_sparse file (format={meta.get('format')!r})")
        keys = list(f.keys())
        for key in keys:
            if "::" not in key:
                state[key] = f.get_tensor(key)
        for key in keys:
            if key.endswith("::values"):
                name = key[: -len("::values")]
                shape = [int(s) for s in meta[f"shape:{name}"].split(",")]
                rows, cols = shape[0], int(torch.tensor(shape[1:]).prod()) if len(shape) > 1 else 1
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    csr = torch.sparse_csr_tensor(f.get_tensor(f"{name}::crow").long(),
                                                  f.get_tensor(f"{name}::col").long(), f.get_tensor(key),
                                                  size=(rows, cols))
                state[name] = csr.to_dense().reshape(shape)
    ref = model.state_dict()
    state = {k: v.to(ref[k].dtype) if k in ref else v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    return model
