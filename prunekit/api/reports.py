"""What a model-changing verb did: one :class:`Report` for ``prune_``, ``sparsify_`` and ``finalize_``."""
from __future__ import annotations

import dataclasses
import json

from .plans import _table

__all__ = ["Report"]


@dataclasses.dataclass
class Report:
    """What ``prune_`` (channels removed), ``sparsify_`` (masks installed) or ``finalize_`` (masks made
    permanent) did. The core fields are filled by every verb; a field that does not apply is empty or None.

    Core: ``op`` (the verb), ``params_before``/``params_after`` (parameters of the model; a mask removes
    none, so they are equal for the mask verbs), ``macs_before``/``macs_after`` (MACs of one forward of the
    example inputs; None for the mask verbs, which trace nothing), ``sparsity`` (fraction of the weights
    removed: ``prune_`` parameters removed / parameters before, the mask verbs pruned / masked weights) and
    ``sparsity_before`` (the same before the call: 0.0 for ``prune_``), ``selection`` (how the channels or
    weights were chosen: ``prune_`` criterion/reduce/allocation, ``sparsify_`` criterion/pattern/allocation/
    mode; ``{}`` for ``plan_channels`` and ``finalize_``), ``skipped`` (``[{"where", "reason"}]``: what could
    not be pruned), ``notes`` (what the trace could not vouch for, e.g. data-dependent control flow).

    Touched: ``groups`` (``prune_``: ``[{"id", "name", "members", "width_before", "width_after"}]``) and
    ``layers`` (the mask verbs: ``{param fqn: {"numel", "pruned", "sparsity"}}``); the other is empty.

    ``prune_`` only: ``approximate`` (``[{"group", "reason"}]``), ``config_changes`` (a Hugging Face config:
    ``{field: [old, new]}``), ``trace`` ("fast": planned on a trace without weight arithmetic, which the
    pruned model's forward confirmed; "real": traced with real values) and ``validation`` (how the pruned
    model's validation forward ran: "fast", "real" or "none"); None for the mask verbs.

    Example:
        >>> import torch, prunekit as pk
        >>> m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> r = pk.sparsify_(m, sparsity=0.5)
        >>> r.op, r.sparsity, r.params_before == r.params_after, r.macs_after
        ('sparsify_', 0.5, True, None)
    """

    op: str = "prune_"
    params_before: int | None = None
    params_after: int | None = None
    macs_before: int | None = None
    macs_after: int | None = None
    groups: list = dataclasses.field(default_factory=list)
    layers: dict = dataclasses.field(default_factory=dict)
    skipped: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)
    selection: dict = dataclasses.field(default_factory=dict)
    sparsity_before: float | None = 0.0
    approximate: list = dataclasses.field(default_factory=list)
    config_changes: dict = dataclasses.field(default_factory=dict)
    trace: str | None = None
    validation: str | None = None
    outputs_changed: list = dataclasses.field(default_factory=list)

    # ---- the mask verbs' counts (over ``layers``) ----
    @property
    def numel(self) -> int:
        """Weights under a mask (mask verbs; 0 for ``prune_``)."""
        return sum(v["numel"] for v in self.layers.values())

    @property
    def pruned(self) -> int:
        """Masked weights that are pruned (mask verbs; 0 for ``prune_``)."""
        return sum(v["pruned"] for v in self.layers.values())

    @property
    def sparsity(self) -> float:
        """Fraction of the weights removed (see the class docstring)."""
        if self.op == "prune_":
            return 1 - self.params_after / self.params_before if self.params_before else 0.0
        return self.pruned / self.numel if self.numel else 0.0

    # ---- the selection, by name (the mask reports' former fields) ----
    @property
    def criterion(self) -> str:
        return self.selection.get("criterion", "")

    @property
    def pattern(self) -> str:
        return self.selection.get("pattern", "")

    @property
    def allocation(self) -> str:
        return self.selection.get("allocation", "")

    @property
    def mode(self) -> str:
        return self.selection.get("mode", "")

    def to_dict(self) -> dict:
        """Every field, plus ``numel``, ``pruned`` and ``sparsity``; JSON-ready."""
        return {**dataclasses.asdict(self), "numel": self.numel, "pruned": self.pruned, "sparsity": self.sparsity}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=str)

    def __str__(self) -> str:
        if self.op == "prune_":
            pr = self.params_after / max(self.params_before, 1)
            mr = self.macs_after / max(self.macs_before, 1)
            s = (f"Pruned: params {self.params_before:,} -> {self.params_after:,} ({pr:.1%} kept), MACs "
                 f"{self.macs_before:,} -> {self.macs_after:,} ({mr:.1%} kept)\n")
            rows = [(str(g["id"]), g["name"], str(g["width_before"]), str(g["width_after"]))
                    for g in self.groups if g["width_after"] != g["width_before"]]
            s += _table(("group", "name", "before", "after"), rows)
        else:
            s = f"{self.op}: {self.pruned:,}/{self.numel:,} weights pruned (sparsity {self.sparsity:.4f})\n"
            rows = [(fqn, f"{v['pruned']:,}/{v['numel']:,}", f"{v['sparsity']:.4f}") for fqn, v in self.layers.items()]
            s += _table(("layer", "pruned", "sparsity"), rows)
        if self.selection:
            s += "\nselected by " + ", ".join(f"{k}={v}" for k, v in self.selection.items())
        if self.skipped:
            s += f"\n{len(self.skipped)} dims not prunable (see .skipped)"
        for o in self.outputs_changed:
            s += f"\noutput {o['output']!r} changed shape: {o['before']} -> {o['after']} (not in keep_outputs)"
        if self.config_changes:
            s += "\nmodel.config updated: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in self.config_changes.items())
        if self.trace == "fast":
            how = "without weight arithmetic" if self.validation == "fast" else "with real values"
            s += f"\ntraced without weight arithmetic; a forward of the pruned model {how} issued the same ops"
        for note in self.notes:
            s += f"\nnote: {note}"
        return s
