"""``inspect``: the model's prunable groups and its non-prunable dims with reasons."""
from __future__ import annotations

import dataclasses

from torch import nn

from ..graph import build_graph
from .options import _check_device, _check_keep_outputs, _module_fqns
from .plans import _table

__all__ = ["inspect", "Inspection"]


@dataclasses.dataclass
class Inspection:
    groups: list
    nonprunable: list
    params: int
    macs: int

    def __str__(self):
        rows = [(str(g.id), g.name, str(g.width), str(len(g.members)),
                 ("~ " if g.approximate else "") + ", ".join(f"{m.fqn}[{m.dim}]" for m in g.members[:4]) +
                 (f", +{len(g.members) - 4}" if len(g.members) > 4 else "")) for g in self.groups]
        s = f"{len(self.groups)} prunable groups, params {self.params:,}, MACs {self.macs:,}\n"
        s += _table(("group", "name", "width", "members", "coupled layers (~ approximate)"), rows)
        np_rows = [(n.fqn, str(n.dim), str(n.size), n.reason) for n in self.nonprunable if
                   "kernel" not in n.reason]
        if np_rows:
            s += "\n\nNot prunable:\n" + _table(("fqn", "dim", "size", "reason"), np_rows)
        return s


def inspect(model: nn.Module, example_inputs, *, ignore=(), keep_outputs="all") -> Inspection:
    """The model's prunable groups (width, coupled layers) and its non-prunable dims with reasons.

    Example:
        >>> import prunekit as pk
        >>> from prunekit.testing import models
        >>> model, x = models()["chain"]()
        >>> len(pk.inspect(model, x).groups)
        2
    """
    ignore_modules = _module_fqns(model, ignore, "ignore") if ignore else {}
    _check_device(model, example_inputs)
    _check_keep_outputs(keep_outputs)
    graph = build_graph(model, example_inputs, ignore_modules=ignore_modules, keep_outputs=keep_outputs)
    return Inspection(graph.groups, graph.nonprunable, graph.params(), graph.macs())
