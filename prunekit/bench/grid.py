"""A benchmark grid: one protocol (model, data, budgets) and the methods × targets × seeds to run through it."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .._registry import closest
from ..errors import ConfigError
from ..recipe import Recipe, parse_target
from ..train.adversarial import parse_attack

GRID_TYPE = "prunekit.BenchGrid"
GRID_VERSION = 1
# the fields that define the protocol: a finished cell is reused only when all of them are unchanged
_PROTOCOL = ("model", "data", "baseline", "prune_epochs", "finetune_epochs", "lr", "batch_size", "subset",
             "calib_batches", "data_dir", "data_options", "ignore", "device", "options", "equal_budget", "controls",
             "robust")  # robust is in a grid's dict only when set, so older fingerprints do not change
# bumped when the protocol's steps change, so that cells of the older protocol are run again
# (2: Torch-Pruning matched within 1% of prunekit's MACs, equal training budgets, epochs counted per cell)
PROTOCOL_VERSION = 2
# control rows when a grid names none: bare engine criteria and the peer tools
_CONTROL_PREFIXES = ("criterion:", "tp:", "torch-prune:")


@dataclass(frozen=True)
class BenchGrid:
    """methods × targets × seeds, each cell run through the same protocol (see :mod:`prunekit.bench`)."""

    name: str = "grid"  # title of the results table
    model: str = "resnet20"  # model spec
    data: str = "fashion-mnist"  # data set name
    baseline: str | None = "resnet20-fashion-mnist"  # trained baseline name or model file; None = untrained
    methods: tuple[str, ...] = ("criterion:l1",)  # method ids (variants: id[option=value,...]), criterion:<name>,
    #                                               tp:<importance>, torch-prune:...
    targets: tuple[str, ...] = ("macs=0.5",)  # macs=/params= fraction kept, sparsity= fraction removed
    seeds: tuple[int, ...] = (0,)  # one cell per seed
    prune_epochs: int = 1  # epochs training-time methods may use before the cut
    finetune_epochs: int = 1  # epochs of fine-tuning after the cut (and BN recalibration)
    lr: float = 0.01  # fine-tuning learning rate (SGD momentum 0.9, cosine)
    batch_size: int = 128  # images per batch
    subset: int | None = 10000  # training images (None = all); the test set is always complete
    calib_batches: int = 8  # training batches for BN recalibration and data-driven criteria; 0 = skip
    data_dir: str | None = None  # folder of the data set files
    data_options: dict = field(default_factory=dict)  # extra prunekit.data.load options (synthetic sizes)
    ignore: tuple[str, ...] = ()  # module paths never pruned
    device: str = "cpu"  # cpu | cuda
    latency: bool = True  # measure batch-1 latency of each pruned model
    options: dict = field(default_factory=dict)  # {method: {option: value}} method-specific overrides
    equal_budget: bool = True  # control rows fine-tune longer by the largest pre-cut training of a method row
    controls: tuple[str, ...] | None = None  # the control rows (None: every criterion:, tp: and torch-prune: row)
    out: str = "benchmarks/results/grid"  # results prefix: <out>.json/.md/.png and the cells in <out>.cells/
    notes: tuple[str, ...] = ()  # sentences printed under the results table (budget, caveats)
    robust: str | None = None  # also the accuracy under this attack after the fine-tune, e.g. "pgd:eps=0.1,steps=10"

    def __post_init__(self):
        for name in ("methods", "targets", "seeds", "ignore", "notes", "controls"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, (list, str, int)):
                value = (value,) if isinstance(value, (str, int)) else tuple(value)
                object.__setattr__(self, name, value)
        problems = []
        if not self.methods:
            problems.append("methods is empty: list at least one method")
        if not self.targets:
            problems.append("targets is empty: list at least one target such as macs=0.5")
        if not self.seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.seeds):
            problems.append(f"seeds={list(self.seeds)!r} must be a non-empty list of integers >= 0")
        if len(set(self.methods)) != len(self.methods):
            problems.append(f"methods={list(self.methods)!r} has duplicates")
        if not isinstance(self.equal_budget, bool):
            problems.append(f"equal_budget={self.equal_budget!r} must be true or false")
        if self.controls is not None:
            stray = [c for c in self.controls if c not in self.methods]
            if stray:
                problems.append(f"controls={list(stray)!r} are not in methods; list control rows among the methods")
        if self.robust is not None:
            try:
                parse_attack(self.robust)
            except ConfigError as e:
                problems.append(str(e))
        if problems:
            raise ConfigError("invalid bench grid: " + "; ".join(problems))
        for t in self.targets:
            parse_target(t, argument="targets")
        self.cell_recipe(self.methods[0], self.targets[0], self.seeds[0])  # validates the shared fields

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, data: dict, source: str = "grid") -> "BenchGrid":
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of grid keys, got {type(data).__name__}")
        data = dict(data)
        kind, version = data.pop("type", GRID_TYPE), data.pop("version", GRID_VERSION)
        if kind != GRID_TYPE or version != GRID_VERSION:
            raise ConfigError(f"{source}: type={kind!r} version={version!r}; expected type {GRID_TYPE} version "
                              f"{GRID_VERSION}")
        valid = cls.fields()
        bad = [k for k in data if k not in valid]
        if bad:
            parts = [f"unknown key {k!r}" + (f" (did you mean {closest(str(k), valid)!r}?)"
                                             if closest(str(k), valid) else "") for k in bad]
            raise ConfigError(f"{source}: " + "; ".join(parts) + f". Valid keys: {', '.join(valid)}")
        for key in ("data_options", "options"):
            if key in data and data[key] is None:
                data[key] = {}
        return cls(**data)

    @classmethod
    def load(cls, path) -> "BenchGrid":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"grid={str(path)!r} does not exist; pass a grid YAML such as "
                              f"benchmarks/recipes/filter_grid.yaml")
        import yaml

        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"grid={str(path)!r} is not valid YAML: {exc}") from None
        return cls.from_dict(data or {}, source=f"grid {str(path)!r}")

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        for key in ("methods", "targets", "seeds", "ignore", "notes", "controls"):
            data[key] = None if data[key] is None else list(data[key])
        if data["robust"] is None:  # a grid without the attack reads (and fingerprints) as before the field
            del data["robust"]
        return {"type": GRID_TYPE, "version": GRID_VERSION, **data}

    def protocol(self) -> dict:
        return {"protocol_version": PROTOCOL_VERSION,
                **{k: (list(v) if isinstance(v, tuple) else v) for k, v in self.to_dict().items() if k in _PROTOCOL}}

    def is_control(self, method: str) -> bool:
        """A control row: random selection, magnitude and the peer tools (see ``controls``)."""
        if self.controls is not None:
            return method in self.controls
        return method.startswith(_CONTROL_PREFIXES)

    def waits(self, method: str) -> bool:
        """Whether the cells of ``method`` run after the method rows of their target: a control row under
        ``equal_budget`` (its fine-tune length comes from their training) and a Torch-Pruning row (its MACs
        goal comes from the MACs they reached)."""
        return method.startswith("tp:") or (self.equal_budget and self.is_control(method))

    def fingerprint(self) -> str:
        text = json.dumps(self.protocol(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def cells(self) -> list[tuple[str, str, int]]:
        """(method, target, seed) in run order: method, then target, then seed, so that each finished stretch
        of a cut-off grid is complete table rows (every seed of a method at a target); the rows that wait on
        the method rows (:meth:`waits`) come last."""
        order = [m for m in self.methods if not self.waits(m)] + [m for m in self.methods if self.waits(m)]
        return [(m, t, s) for m in order for t in self.targets for s in self.seeds]

    def cell_recipe(self, method: str, target: str, seed: int) -> Recipe:
        """The run recipe of one cell (peer methods use it for the shared fields only). A variant
        ``id[option=value,...]`` runs method ``id`` with ``options[id]``, then ``options[variant]``, then the
        inline options on top."""
        base, inline = split_variant(method)
        opts = {**self.options.get(base, {}), **(self.options.get(method, {}) if method != base else {}), **inline}
        return Recipe(model=self.model, data=self.data, baseline=self.baseline,
                      method=base, target=target,
                      options=opts, ignore=tuple(self.ignore),
                      prune_epochs=self.prune_epochs, finetune_epochs=self.finetune_epochs, lr=self.lr,
                      batch_size=self.batch_size, subset=self.subset, calib_batches=self.calib_batches, seed=seed,
                      device=self.device, data_dir=self.data_dir, data_options=dict(self.data_options),
                      out=os.fspath(self.out), latency=self.latency)


def split_variant(method: str) -> tuple[str, dict]:
    """``"dropnet[order=max,fraction=0.1]"`` -> ``("dropnet", {"order": "max", "fraction": 0.1})``; values are
    read as YAML scalars. A plain id comes back with no options.

    Example:
        >>> split_variant("dropnet[order=random]"), split_variant("l1-filter")
        (('dropnet', {'order': 'random'}), ('l1-filter', {}))
    """
    import yaml

    if not (isinstance(method, str) and method.endswith("]") and "[" in method):
        return method, {}
    base, _, body = method[:-1].partition("[")
    opts = {}
    for part in filter(None, (p.strip() for p in body.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip() or not base:
            raise ConfigError(f"method={method!r}: a variant is written id[option=value,...], e.g. "
                              f"dropnet[order=random]")
        opts[key.strip()] = yaml.safe_load(value.strip())
    return base.strip(), opts


def cell_id(method: str, target: str, seed: int) -> str:
    safe = lambda s: "".join(c if c.isalnum() or c in "-." else "_" for c in s)  # noqa: E731
    return f"{safe(target)}__{safe(method)}__s{seed}"
