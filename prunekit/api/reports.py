"""What a verb did: :class:`Report`."""
from __future__ import annotations

import dataclasses

from .plans import _table

__all__ = ["Report"]


@dataclasses.dataclass
class Report:
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    groups: list  # [{"id", "name", "members", "width_before", "width_after"}]
    skipped: list  # [{"where", "reason"}]
    approximate: list = dataclasses.field(default_factory=list)  # [{"group", "reason"}]
    config_changes: dict = dataclasses.field(default_factory=dict)  # Hugging Face config: {field: [old, new]}
    # "fast": planned on a trace without weight arithmetic, which the pruned model's forward confirmed;
    # "real": traced with real values (calibration data, a given plan, or a fast trace not confirmed)
    trace: str = "real"
    # how the pruned model's validation forward ran: "fast" (without weight arithmetic, with the fast trace's
    # value checks), "real", or "none" (no example inputs)
    validation: str = "real"
    # how the channels were chosen: {"criterion", "reduce", "allocation"} of the plan ({} for plan_channels)
    selection: dict = dataclasses.field(default_factory=dict)
    # what the trace could not vouch for, e.g. data-dependent control flow (the plan covers the traced path)
    notes: list = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        pr = self.params_after / max(self.params_before, 1)
        mr = self.macs_after / max(self.macs_before, 1)
        rows = [(str(g["id"]), g["name"], str(g["width_before"]), str(g["width_after"]))
                for g in self.groups if g["width_after"] != g["width_before"]]
        s = (f"Pruned: params {self.params_before:,} -> {self.params_after:,} ({pr:.1%} kept), MACs "
             f"{self.macs_before:,} -> {self.macs_after:,} ({mr:.1%} kept)\n")
        s += _table(("group", "name", "before", "after"), rows)
        if self.selection:
            s += "\nselected by " + ", ".join(f"{k}={v}" for k, v in self.selection.items())
        if self.skipped:
            s += f"\n{len(self.skipped)} dims not prunable (see .skipped)"
        if self.config_changes:
            s += "\nmodel.config updated: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in self.config_changes.items())
        if self.trace == "fast":
            how = "without weight arithmetic" if self.validation == "fast" else "with real values"
            s += f"\ntraced without weight arithmetic; a forward of the pruned model {how} issued the same ops"
        for note in self.notes:
            s += f"\nnote: {note}"
        return s
