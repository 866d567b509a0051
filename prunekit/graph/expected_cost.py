"""A differentiable cost of a model whose channels are kept with some probability (soft channel masks).

The exact cost model of a traced :class:`~prunekit.graph.Graph` is a sum over layers of products of factors;
a factor is a fixed size or a tensor dim whose positions belong to channels of prunable groups, and it counts
``size - removed positions``. :func:`expected_cost` replaces every removable position by the probability that
its channel is kept, so the result is a torch scalar that gradients flow through to the keep probabilities.
At 0/1 probabilities it equals ``graph.macs(removed)`` / ``graph.params(removed)`` exactly; in between it is
the expected cost when the channels of different groups are kept independently (a product of expectations).
Training-time methods with differentiable channel masks (budget barriers, FLOPs-weighted sparsity terms) use
it to price their masks with the engine's own cost model.
"""
from __future__ import annotations

from typing import Literal, Mapping

import numpy as np
import torch

from ..errors import ConfigError

__all__ = ["expected_cost", "flat_keep"]


def flat_keep(graph, keep: Mapping[int, torch.Tensor]) -> torch.Tensor:
    """One keep probability per channel of the graph (groups in order), ``keep[group id]`` where given, else 1."""
    parts = []
    ref = next(iter(keep.values())) if keep else torch.ones(0)
    for g in graph.groups:
        p = keep.get(g.id)
        if p is None:
            parts.append(torch.ones(g.width, dtype=ref.dtype, device=ref.device))
            continue
        if p.shape != (g.width,):
            raise ConfigError(f"keep[{g.id}] has shape {tuple(p.shape)}; group {g.name} has {g.width} channels")
        parts.append(p)
    return torch.cat(parts) if parts else torch.zeros(0)


def expected_cost(graph, keep: Mapping[int, torch.Tensor], kind: Literal["macs", "params"] = "macs") -> torch.Tensor:
    """Expected MACs (or parameters) of ``graph``'s model when channel ``c`` of group ``g`` is kept with
    probability ``keep[g][c]`` (groups missing from ``keep``: every channel kept). A torch scalar (float64).

    Example:
        >>> from torch import nn
        >>> from prunekit.graph import build_graph
        >>> m = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False))
        >>> g = build_graph(m, torch.randn(1, 3))
        >>> gid = g.groups[0].id
        >>> float(expected_cost(g, {gid: torch.tensor([1.0, 1.0, 0.5, 0.0])}))  # 3*2.5 + 2.5*2
        12.5
    """
    if kind not in ("macs", "params"):
        raise ConfigError(f"kind={kind!r}; choose 'macs' or 'params'")
    flat = flat_keep(graph, keep).double()
    terms = graph.mac_terms if kind == "macs" else graph.param_terms
    total = flat.new_zeros(())
    for _fqn, factors in terms:
        v = flat.new_ones(())
        for f in factors:
            if isinstance(f, (int, np.integer)):
                v = v * int(f)
            else:
                size, idx = f
                v = v * ((size - len(idx)) + flat[torch.as_tensor(idx, dtype=torch.long, device=flat.device)].sum())
        total = total + v
    return total
