"""The one MAC counter of prunekit, shared with the structural engine's cost model.

Convention: multiply-accumulates of convolutions (all kinds, including transposed and grouped),
matrix products (linear, addmm, mm, bmm, matmul, baddbmm, einsum), scaled-dot-product attention (two
products: q·k and attention·v) and recurrent cells (input and hidden products of every gate); every other
op counts 0. ``pk.plan``'s predicted MACs use the same records, so they match this count exactly.
"""
from __future__ import annotations

import dataclasses

from torch import nn
from ..graph import build_graph

__all__ = ["MacCount", "count_macs"]


@dataclasses.dataclass
class MacCount:
    total: int
    per_module: dict  # fqn of the innermost module issuing the op -> MACs ("" for the root)


def count_macs(model: nn.Module, example_inputs) -> MacCount:
    """Count MACs of one forward of ``model`` on ``example_inputs`` (eval mode, no grad, model unchanged).

    Example:
        >>> import torch
        >>> count_macs(torch.nn.Linear(4, 3), torch.randn(2, 4)).total
        24
    """
    g = build_graph(model, example_inputs)
    return MacCount(g.macs(), g.macs_per_module())
