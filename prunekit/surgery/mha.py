"""Converting a pruned ``nn.MultiheadAttention`` into its op-by-op twin for good, and resizing its attributes.

The twin itself, :class:`~prunekit.graph.mha.PrunableMultiheadAttention`, lives in the graph package (the
recorder traces every supported instance through it); it and :func:`supported` stay importable from here.
Surgery converts an instance in place (``module.__class__``; no copy) only when a prune changes its weights
(:func:`mark_pruned_`), then brings ``embed_dim``/``kdim``/``vdim``/``num_heads`` in line with the pruned
weights (:func:`sync_attrs_`); ``prunekit.load`` converts it again when it rebuilds a saved model.
"""
from __future__ import annotations

from torch import nn

from ..graph.mha import PrunableMultiheadAttention, supported

__all__ = ["PrunableMultiheadAttention", "mark_pruned_", "supported", "sync_attrs_"]


def mark_pruned_(module: nn.Module, set_attr) -> None:
    """Turn ``module`` into a :class:`PrunableMultiheadAttention` for good through ``set_attr(obj, name, value)``.

    ``_qkv_same_embed_dim`` is cleared as well: torch's ``TransformerEncoderLayer`` has a fused inference
    path that reads the attention's packed weights with its own idea of the head layout, and it is only
    taken when that flag is set. This class does not read the flag (it looks at the weights themselves).
    """
    set_attr(module, "__class__", PrunableMultiheadAttention)
    set_attr(module, "_qkv_same_embed_dim", False)


def sync_attrs_(module: PrunableMultiheadAttention, set_attr) -> None:
    """Bring ``embed_dim``/``kdim``/``vdim``/``num_heads`` in line with the (pruned) weights."""
    (w_q, w_k, w_v), _ = module._projections()
    for name, value in (("embed_dim", int(w_q.shape[1])), ("kdim", int(w_k.shape[1])),
                        ("vdim", int(w_v.shape[1])), ("num_heads", int(w_q.shape[0]) // module.head_dim)):
        if getattr(module, name) != value:
            set_attr(module, name, value)
