"""Parameter counts, sparsity and widths, read off a model's modules.

Each parameter belongs to the first module that holds it directly (tied weights count once). A weight
under ``torch.nn.utils.parametrize`` is counted as the effective tensor its module computes, attributed
to that module, not as the ``original`` behind it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn as nn

__all__ = ["count_params", "sparsity", "widths", "width_of", "owned_tensors", "Sparsity"]


def owned_tensors(model: nn.Module) -> Iterator[tuple[str, str, torch.Tensor]]:
    """``(module fqn, parameter name, tensor)`` for every distinct parameter, in module order."""
    from torch.nn.utils import parametrize

    seen: set[int] = set()
    for fqn, mod in model.named_modules():
        if isinstance(mod, parametrize.ParametrizationList):
            continue
        names = []
        if parametrize.is_parametrized(mod):
            for pname in mod.parametrizations:
                names.append((pname, getattr(mod, pname)))
        names += [(n, p) for n, p in mod._parameters.items() if p is not None]
        for pname, t in names:
            key = id(t) if pname in mod._parameters else id(mod.parametrizations[pname].original)
            if key in seen:
                continue
            seen.add(key)
            yield fqn, pname, t.detach()


def count_params(model: nn.Module, nonzero: bool = False) -> int:
    """Number of parameters (each tied tensor once); ``nonzero=True`` counts only non-zero entries.

    Example:
        >>> lin = nn.Linear(3, 2)
        >>> with torch.no_grad():
        ...     _ = lin.weight.zero_()
        >>> count_params(lin), count_params(lin, nonzero=True)
        (8, 2)
    """
    if nonzero:
        return int(sum(int(torch.count_nonzero(t)) for _, _, t in owned_tensors(model)))
    return int(sum(t.numel() for _, _, t in owned_tensors(model)))


@dataclass(frozen=True)
class Sparsity:
    """Fraction of zero entries: per module (its own parameters) and over the whole model."""

    per_layer: dict  # fqn -> fraction of zeros in [0, 1]
    overall: float  # zeros / total over every counted parameter
    zeros: int
    total: int


def sparsity(model: nn.Module, *, weights_only: bool = False) -> Sparsity:
    """Zero fractions per module and overall; ``weights_only`` counts only tensors named ``*weight*``.

    Example:
        >>> lin = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = lin.weight[0].zero_()
        >>> s = sparsity(lin, weights_only=True)
        >>> s.overall, s.zeros, s.total
        (0.5, 2, 4)
    """
    zeros: dict[str, int] = {}
    totals: dict[str, int] = {}
    for fqn, pname, t in owned_tensors(model):
        if weights_only and "weight" not in pname:
            continue
        zeros[fqn] = zeros.get(fqn, 0) + int(t.numel() - torch.count_nonzero(t))
        totals[fqn] = totals.get(fqn, 0) + t.numel()
    z, n = sum(zeros.values()), sum(totals.values())
    per = {k: (zeros[k] / totals[k] if totals[k] else 0.0) for k in totals}
    return Sparsity(per_layer=per, overall=z / n if n else 0.0, zeros=z, total=n)


def width_of(module: nn.Module) -> int | None:
    """Output channels / features / hidden size of a layer, or None for a module without one."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, (nn.modules.batchnorm._NormBase,)):
        return module.num_features
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    if isinstance(module, nn.LayerNorm):
        return int(module.normalized_shape[-1]) if module.normalized_shape else None
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return module.embedding_dim
    if isinstance(module, nn.RNNBase):
        return module.hidden_size
    if isinstance(module, (nn.RNNCellBase,)):
        return module.hidden_size
    if isinstance(module, nn.MultiheadAttention):
        return module.embed_dim
    nf = getattr(module, "nf", None)  # Hugging Face's Conv1D (GPT-2): weight [in, out]
    if isinstance(nf, int) and "weight" in module._parameters:
        return nf
    return None


def widths(model: nn.Module) -> dict[str, int]:
    """``{fqn: width}`` for every layer with a width (conv, linear, norm, embedding, RNN, attention).

    Example:
        >>> widths(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2)))
        {'0': 4, '1': 4, '3': 2}
    """
    out = {}
    for fqn, mod in model.named_modules():
        w = width_of(mod)
        if w is not None:
            out[fqn] = int(w)
    return out
