"""What ``plan`` decides, as data: :class:`Plan` (per coupled group, every member and the exact indices
``prune_`` removes) and its JSON form (``to_json``/``from_json``), plus the plain-text tables the verbs print."""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from ..errors import ConfigError

__all__ = ["Plan", "PlanGroup"]

_PLAN_VERSION = 1


@dataclasses.dataclass
class PlanGroup:
    id: int
    name: str
    width: int  # channels before
    kept: int  # channels after
    channels: list  # group channel indices removed
    members: list  # [{"fqn", "dim", "size", "indices"}]
    approximate: list = dataclasses.field(default_factory=list)

    @property
    def removed(self) -> int:
        return self.width - self.kept


@dataclasses.dataclass
class Plan:
    """What ``prune_`` will remove: per group, every member ``(fqn, dim)`` and the exact ``indices``."""

    groups: list
    predicted: dict  # params_before, params_after, macs_before, macs_after
    settings: dict
    shapes: dict  # fqn -> shape of every parameter/buffer the plan touches, at planning time
    skipped: list = dataclasses.field(default_factory=list)  # [{"where", "reason"}]
    version: int = _PLAN_VERSION
    _graph: Any = dataclasses.field(default=None, repr=False, compare=False)
    _model: Any = dataclasses.field(default=None, repr=False, compare=False)
    _example_inputs: Any = dataclasses.field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {"version": self.version, "settings": self.settings, "predicted": self.predicted,
                "shapes": {k: list(v) for k, v in self.shapes.items()},
                "groups": [dataclasses.asdict(g) for g in self.groups], "skipped": self.skipped}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        d = json.loads(text)
        if d.get("version") != _PLAN_VERSION:
            raise ConfigError(f"plan version {d.get('version')!r} is not supported (expected {_PLAN_VERSION}); "
                              f"re-create the plan with this prunekit version")
        return cls(groups=[PlanGroup(**g) for g in d["groups"]], predicted=d["predicted"], settings=d["settings"],
                   shapes={k: tuple(v) for k, v in d["shapes"].items()}, skipped=d.get("skipped", []))

    def __str__(self) -> str:
        p = self.predicted
        rows = [(str(g.id), g.name, f"{g.width}->{g.kept}", str(len(g.members)),
                 ("~ " if g.approximate else "") + _short_members(g.members)) for g in self.groups if g.removed]
        head = (f"Plan: {len(self.groups)} groups, {sum(1 for g in self.groups if g.removed)} pruned; params "
                f"{p['params_before']:,} -> {p['params_after']:,}, MACs {p['macs_before']:,} -> "
                f"{p['macs_after']:,}")
        st = self.settings
        if st.get("criterion"):
            head += (f"\ncriterion {st['criterion']} (reduce={st.get('reduce', 'group')}), allocation "
                     f"{st.get('allocation', 'global' if st.get('global_') else 'uniform')}")
        return head + "\n" + _table(("group", "name", "width", "members", "coupled (~ approximate)"), rows)


def _short_members(members, n=4) -> str:
    s = ", ".join(f"{m['fqn']}[{m['dim']}]" for m in members[:n])
    return s + (f", +{len(members) - n}" if len(members) > n else "")


def _table(header, rows) -> str:
    rows = [tuple(header)] + [tuple(r) for r in rows]
    w = [min(max(len(r[i]) for r in rows), 80) for i in range(len(header))]
    lines = ["  ".join(c[:80].ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * x for x in w))
    return "\n".join(lines)
