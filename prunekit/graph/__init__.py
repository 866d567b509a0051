"""Tracing and channel groups: which parameter dims must shrink together.

``build_graph(model, example_inputs)`` records one real forward at the aten level (see ``trace``), runs
the per-op rules (``rules``) that propagate *channel atoms* and returns a :class:`Graph` with its
``groups`` (coupled ``(fqn, dim)`` members and the channel of every position), the dims that cannot be
pruned with the reason, and an exact params/MACs cost model.
"""
from __future__ import annotations

from .groups import Graph, Group, Member, NonPrunable, build_graph
from .handlers_registry import handlers, register_handler
from .recording import Recording
from .tensors import call_model
from .trace import keep_outputs_scope, record

__all__ = ["Graph", "Group", "Member", "NonPrunable", "Recording", "build_graph", "call_model", "handlers",
           "keep_outputs_scope", "record", "register_handler"]
