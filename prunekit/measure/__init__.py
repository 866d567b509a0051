"""Measure a model: parameters, MACs, per-layer widths and sparsity, size on disk, CPU latency; the
perplexity of a language model on token data (:func:`perplexity`).

MACs come from the one counter every part of prunekit uses, :func:`prunekit.measure.macs.count_macs`
(multiply-accumulates of convolutions, linear layers / matmuls and recurrent cells; everything else 0).

Example:
    >>> import torch, torch.nn as nn
    >>> from prunekit.measure import count_params, size_on_disk, widths
    >>> m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> count_params(m), widths(m)
    (23, {'0': 3, '2': 2})
"""
from __future__ import annotations

import logging
import sys
import types
from dataclasses import dataclass, field

import torch.nn as nn

from .timing import LatencyStats, call_model, latency, latency as _latency
from .params import Sparsity, count_params, owned_tensors, sparsity, width_of, widths
from .size import encode_sparse, size_on_disk
from .macs import count_macs as _count
from .energy import EnergyModel, energy, layer_energy
from .perplexity import perplexity

log = logging.getLogger(__name__)

__all__ = ["measure", "Measurement", "LayerStats", "count_params", "latency", "LatencyStats", "size_on_disk",
           "sparsity", "Sparsity", "widths", "count_macs", "encode_sparse", "energy", "layer_energy", "EnergyModel",
           "perplexity"]


def count_macs(model: nn.Module, example_inputs):
    """Multiply-accumulates of one forward (see :mod:`prunekit.measure.macs`)."""
    return _count(model, example_inputs)


@dataclass(frozen=True)
class LayerStats:
    params: int  # parameters the module holds directly
    macs: int | None  # multiply-accumulates attributed to the module (None when MACs were not counted)
    width: int | None  # output channels / features / hidden size
    sparsity: float  # fraction of zeros among its own parameters
    kind: str  # module class name

    def to_dict(self) -> dict:
        return {"params": self.params, "macs": self.macs, "width": self.width, "sparsity": self.sparsity,
                "kind": self.kind}


@dataclass(frozen=True)
class Measurement:
    params: int  # every distinct parameter
    nonzero_params: int  # parameters that are not exactly zero
    macs: int | None  # one forward with the example inputs; None when the MAC counter is unavailable
    sparsity: float  # zeros / params over the whole model
    size_dense: int | None  # bytes, safetensors (None when measured with sizes=False)
    size_sparse: int | None  # bytes, non-zero values + compact indices
    size_compressed: int | None  # bytes, the sparse bytes through zlib
    per_layer: dict = field(default_factory=dict)  # fqn -> LayerStats
    latency: LatencyStats | None = None

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return {
            "params": self.params, "nonzero_params": self.nonzero_params, "macs": self.macs,
            "sparsity": self.sparsity, "size_dense": self.size_dense, "size_sparse": self.size_sparse,
            "size_compressed": self.size_compressed,
            "per_layer": {k: v.to_dict() for k, v in self.per_layer.items()},
            "latency": self.latency.to_dict() if self.latency else None,
        }

    def table(self) -> str:
        """A plain-text per-layer table (for people; reports use :meth:`to_dict`)."""
        rows = [("layer", "kind", "width", "params", "MACs", "sparsity")]
        for fqn, s in self.per_layer.items():
            rows.append((fqn or "(root)", s.kind, "" if s.width is None else str(s.width), f"{s.params:,}",
                         "" if s.macs is None else f"{s.macs:,}", f"{s.sparsity:.3f}"))
        widths_ = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths_)))
                 for r in rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        macs = "n/a" if self.macs is None else f"{self.macs:,}"
        head = f"params {self.params:,} (non-zero {self.nonzero_params:,}, sparsity {self.sparsity:.3f}), MACs {macs}"
        if self.size_dense is not None:
            head += (f", size dense/sparse/compressed {self.size_dense:,}/{self.size_sparse:,}/"
                     f"{self.size_compressed:,} B")
        if self.latency is not None:
            head += f", latency {self.latency.median_ms:.3f} ms (p10 {self.latency.p10:.3f}, p90 {self.latency.p90:.3f})"
        return head + "\n" + self.table()


def measure(model: nn.Module, example_inputs, *, latency: bool = False, sizes: bool = True,
            **latency_kw) -> Measurement:
    """Everything :mod:`prunekit.measure` knows about ``model``, for one forward with ``example_inputs``.

    ``latency=True`` also times it (``latency_kw`` go to :func:`prunekit.measure.latency`).
    ``sizes=False`` skips the sizes on disk (the compressed one takes seconds for a VGG-16): for loops
    that only need parameters and MACs.

    Example:
        >>> import torch
        >>> m = measure(nn.Linear(4, 2), torch.zeros(1, 4))
        >>> m.params, m.per_layer[""].width
        (10, 2)
    """
    try:
        mc = count_macs(model, example_inputs)
        total_macs, per_module = int(mc.total), dict(mc.per_module)
    except ImportError:
        log.warning("prunekit.measure.macs is not available: MACs are not counted")
        total_macs, per_module = None, {}
    own: dict[str, int] = {}
    for fqn, _, t in owned_tensors(model):
        own[fqn] = own.get(fqn, 0) + t.numel()
    sp = sparsity(model)
    per_layer = {}
    for fqn, mod in model.named_modules():
        macs = per_module.get(fqn)
        if fqn not in own and not macs:
            continue
        per_layer[fqn] = LayerStats(params=own.get(fqn, 0), macs=None if total_macs is None else int(macs or 0),
                                    width=width_of(mod), sparsity=sp.per_layer.get(fqn, 0.0), kind=type(mod).__name__)
    lat = None
    if latency:
        lat = _latency(model, example_inputs, **latency_kw)
    return Measurement(
        params=sp.total, nonzero_params=sp.total - sp.zeros, macs=total_macs, sparsity=sp.overall,
        size_dense=size_on_disk(model, "dense") if sizes else None,
        size_sparse=size_on_disk(model, "sparse") if sizes else None,
        size_compressed=size_on_disk(model, "compressed") if sizes else None, per_layer=per_layer, latency=lat,
    )


class _CallableModule(types.ModuleType):
    """Lets ``prunekit.measure(model, x)`` work whether ``prunekit.measure`` resolves to this module
    (as it does once anything has imported it) or to the function."""

    def __call__(self, model: nn.Module, example_inputs, **kw) -> Measurement:
        return measure(model, example_inputs, **kw)


sys.modules[__name__].__class__ = _CallableModule
