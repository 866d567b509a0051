"""Recipes: the complete, replayable description of one ``prunekit run`` / ``prunekit bench`` job.

A :class:`Recipe` is a frozen dataclass. It round-trips through YAML or JSON with a type name and a
version, command-line flags override it field by field, and the resolved recipe is written next to the
outputs of every run so that ``prunekit run --recipe runs/<name>/recipe.yaml`` repeats the run exactly.

Example:
    >>> r = Recipe(target="macs=0.25", finetune_epochs=2)
    >>> Recipe.from_dict(r.to_dict()) == r
    True
    >>> r.override(lr=0.05).lr
    0.05
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._registry import closest
from .errors import ConfigError

__all__ = ["Recipe", "parse_target", "TARGET_KINDS", "LATENCY_KINDS", "LATENCY_METHODS", "RECIPE_TYPE", "RECIPE_VERSION"]

RECIPE_TYPE = "prunekit.Recipe"
RECIPE_VERSION = 1
TARGET_KINDS = ("macs", "params", "sparsity", "latency")
# a latency target is measured, not counted: only a width search priced by a latency table of this machine
# takes one (``parse_target(..., latency=True)``); it parses to one of these kinds
LATENCY_KINDS = ("latency", "latency_ms")
# the registered methods that take a latency target (their config has ``latency_table``); a test keeps this
# list equal to the registry's
LATENCY_METHODS = ("abcpruner", "amc", "eagleeye")
DEVICES = ("cpu", "cuda", "mps")


# names users write for a kind, mapped to the kind of the SAME meaning (never the opposite one: ``params``
# is the fraction kept, ``sparsity`` the fraction removed)
_TARGET_SYNONYMS = {"flops": "macs", "mac": "macs", "flop": "macs", "compute": "macs", "param": "params",
                    "parameters": "params", "weights": "params", "size": "params", "keep": "params",
                    "kept": "params", "density": "params", "remove": "sparsity", "removed": "sparsity",
                    "prune": "sparsity", "pruned": "sparsity", "sparse": "sparsity", "ratio": "sparsity"}


def parse_target(target: str, argument: str = "target", *, latency: bool = False) -> tuple[str, float]:
    """Split ``"macs=0.5"`` into ``("macs", 0.5)`` after checking both halves: the one target grammar of the
    API (``plan``/``prune_``), recipes and the command line.

    ``macs``/``params`` give the fraction the pruned model *keeps* (0 < v <= 1); ``sparsity`` the fraction of
    weights removed (0 <= v < 1). ``latency=F`` keeps at most the fraction F of the dense model's measured
    latency and ``latency=Xms`` is an absolute budget; they parse to ``("latency", F)`` / ``("latency_ms", X)``
    only where ``latency=True`` (a width search priced by a latency table), and are refused elsewhere with
    where to take them. The kind is case-insensitive; anything else is a ``ConfigError`` whose hint never
    names a kind of the opposite meaning.

    Example:
        >>> parse_target("params=0.25")
        ('params', 0.25)
        >>> parse_target(" Sparsity = 0.9 ")
        ('sparsity', 0.9)
        >>> parse_target("latency=0.5", latency=True), parse_target("latency=3.5ms", latency=True)
        (('latency', 0.5), ('latency_ms', 3.5))
    """
    fix = ("write it as KIND=VALUE, e.g. macs=0.5 (keep half the MACs), params=0.5 (keep half the "
           "parameters) or sparsity=0.9 (remove 90% of weights)")
    if not isinstance(target, str) or target.count("=") != 1:
        raise ConfigError(f"{argument}={target!r} is not a target; {fix}")
    kind, _, raw = (part.strip() for part in target.partition("="))
    kind = kind.lower()
    if kind not in TARGET_KINDS:
        hint = _TARGET_SYNONYMS.get(kind) or closest(kind, TARGET_KINDS)
        raise ConfigError(
            f"{argument}={target!r}: unknown target kind {kind!r}"
            + (f"; did you mean {hint!r}?" if hint else "")
            + f" Valid kinds: {', '.join(TARGET_KINDS)}; {fix}"
        )
    if kind == "latency":
        return _parse_latency(target, raw, argument, latency)
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{argument}={target!r}: {raw!r} is not a number; {fix}") from None
    if kind == "sparsity" and not 0.0 <= value < 1.0:
        raise ConfigError(f"{argument}={target!r}: sparsity is the fraction removed and must be in [0, 1), "
                          f"e.g. sparsity=0.9 removes 90%")
    if kind != "sparsity" and not 0.0 < value <= 1.0:
        raise ConfigError(f"{argument}={target!r}: {kind} gives the fraction kept; the fraction kept must be in (0, 1], "
                          f"e.g. {kind}=0.5 keeps half")
    return kind, value


def _parse_latency(target: str, raw: str, argument: str, allowed: bool) -> tuple[str, float]:
    if not allowed:
        raise ConfigError(
            f"{argument}={target!r}: a latency target is measured on this machine, not counted, so only a width "
            f"search priced by a latency table takes it: pk.search(..., latency_table=PATH), `prunekit search "
            f"--latency-table PATH`, or the methods {', '.join(LATENCY_METHODS)} with the option "
            f"latency_table=PATH; here give macs=F or params=F instead")
    fix = "write latency=F (keep at most the fraction F of the dense latency, 0 < F <= 1) or latency=Xms"
    ms = raw.lower().endswith("ms")
    number = raw[:-2].strip() if ms else raw
    try:
        value = float(number)
    except ValueError:
        raise ConfigError(f"{argument}={target!r} is not a latency target: {number!r} is not a number; "
                          f"{fix}") from None
    if ms:
        if not value > 0:
            raise ConfigError(f"{argument}={target!r}: an absolute latency must be > 0 ms; {fix}")
        return "latency_ms", value
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"{argument}={target!r}: latency=F is the fraction of the dense latency kept and must be "
                          f"in (0, 1]; for milliseconds add the unit, e.g. latency={value}ms")
    return "latency", value


def check_keep_outputs(keep) -> None:
    """``keep_outputs`` is ``"all"``, an output name or index, or a non-empty list of them (checked against the
    model's outputs when it is traced)."""
    def ok(k):
        return isinstance(k, str) or (isinstance(k, int) and not isinstance(k, bool))
    if isinstance(keep, (list, tuple)) and not keep:
        raise ConfigError(f"keep_outputs={keep!r} keeps no output; name the outputs whose shape must not change "
                          f"(e.g. keep_outputs=['pooler_output']), or 'all' (the default)")
    if ok(keep) or (isinstance(keep, (list, tuple)) and all(ok(k) for k in keep)):
        return
    raise ConfigError(f"keep_outputs={keep!r} must be 'all' (the default), an output's name or index, or a "
                      f"non-empty list of them, e.g. keep_outputs=['pooler_output']")


@dataclass(frozen=True)
class Recipe:
    """One pruning job: baseline, method, target, training budget and outputs."""

    model: str = "resnet20"  # model spec for prunekit.models.create (or "torchvision:...", ...)
    data: str = "fashion-mnist"  # data set name for prunekit.data.load
    baseline: str | None = "resnet20-fashion-mnist"  # shipped baseline name or checkpoint path; None = train-free
    method: str = "l1-filter"  # method id (prunekit methods) or "criterion:<name>" for a bare engine criterion
    target: str = "macs=0.5"  # macs=/params= fraction kept, sparsity= fraction removed
    options: dict = field(default_factory=dict)  # method-specific overrides of its defaults
    ignore: tuple[str, ...] = ()  # FQNs (or re:<regex>) never pruned
    keep_outputs: Any = "all"  # outputs whose shape must not change: "all" or a list of output names/indices
    prune_epochs: int = 1  # epochs a training-time method may spend before the cut
    finetune_epochs: int = 3  # epochs of fine-tuning after the cut
    lr: float = 0.01  # fine-tuning learning rate (cosine schedule, SGD momentum 0.9)
    batch_size: int = 128  # images per batch
    subset: int | None = None  # training images used (None = all); the test set is always complete
    calib_batches: int = 8  # batches for BN recalibration and data-driven criteria (0 = no recalibration)
    seed: int = 0  # seeds data order, random criteria and training
    device: str = "cpu"  # cpu | cuda | mps
    data_dir: str | None = None  # where the data set files live (None = prunekit.data's default)
    data_options: dict = field(default_factory=dict)  # extra prunekit.data.load options (e.g. synthetic sizes)
    out: str = "runs/default"  # output folder
    latency: bool = True  # measure CPU latency before/after (batch 1)

    def __post_init__(self):
        problems = []
        for name, kind in (("model", str), ("data", str), ("method", str), ("target", str), ("out", str),
                           ("device", str)):
            if not isinstance(getattr(self, name), kind) or not getattr(self, name):
                problems.append(f"{name}={getattr(self, name)!r} must be a non-empty string")
        for name in ("prune_epochs", "finetune_epochs", "calib_batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems.append(f"{name}={value!r} must be an integer >= 0")
        for name in ("batch_size", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "batch_size" else 0):
                problems.append(f"{name}={value!r} must be an integer >= {1 if name == 'batch_size' else 0}")
        if self.subset is not None and (isinstance(self.subset, bool) or not isinstance(self.subset, int)
                                        or self.subset < 1):
            problems.append(f"subset={self.subset!r} must be a positive integer or null (all images)")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            problems.append(f"lr={self.lr!r} must be a positive number")
        if not isinstance(self.options, dict):
            problems.append(f"options={self.options!r} must be a mapping of method option -> value")
        if not isinstance(self.data_options, dict):
            problems.append(f"data_options={self.data_options!r} must be a mapping of data option -> value")
        if not isinstance(self.ignore, tuple) or not all(isinstance(s, str) for s in self.ignore):
            problems.append(f"ignore={self.ignore!r} must be a list of module paths")
        try:
            check_keep_outputs(self.keep_outputs)
        except ConfigError as e:
            problems.append(str(e))
        if self.baseline is not None and not isinstance(self.baseline, str):
            problems.append(f"baseline={self.baseline!r} must be a baseline name, a checkpoint path or null")
        if not isinstance(self.latency, bool):
            problems.append(f"latency={self.latency!r} must be true or false")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            problems.append(f"data_dir={self.data_dir!r} must be a folder path or null")
        if isinstance(self.device, str) and self.device.split(":")[0] not in DEVICES:
            problems.append(f"device={self.device!r}: choose one of {', '.join(DEVICES)}")
        if isinstance(self.target, str) and self.target:
            try:
                parse_target(self.target, latency=True)
            except ConfigError as exc:
                problems.append(str(exc))
        if len(problems) == 1 and problems[0].startswith("target="):
            raise ConfigError(problems[0])
        if problems:
            raise ConfigError("invalid recipe: " + "; ".join(problems))

    # --- construction ------------------------------------------------------------------------------
    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, data: dict, source: str = "recipe") -> "Recipe":
        """Build a recipe from a mapping; unknown keys and a wrong type name/version are errors."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of recipe keys, got {type(data).__name__}")
        data = dict(data)
        kind = data.pop("type", RECIPE_TYPE)
        version = data.pop("version", RECIPE_VERSION)
        if kind != RECIPE_TYPE:
            raise ConfigError(f"{source}: type={kind!r} is not a recipe; expected type: {RECIPE_TYPE}")
        if version != RECIPE_VERSION:
            raise ConfigError(f"{source}: version={version!r} is not supported; this prunekit reads version "
                              f"{RECIPE_VERSION}")
        _check_keys(data, source)
        if "ignore" in data and data["ignore"] is not None:
            ignore = data["ignore"]
            data["ignore"] = (ignore,) if isinstance(ignore, str) else tuple(ignore) if isinstance(
                ignore, (list, tuple)) else ignore  # anything else is reported by __post_init__
        elif "ignore" in data:
            data["ignore"] = ()
        for key in ("options", "data_options"):
            if key in data and data[key] is None:
                data[key] = {}
        if isinstance(data.get("keep_outputs"), list):
            data["keep_outputs"] = tuple(data["keep_outputs"])
        return cls(**data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Recipe":
        """Read a recipe from ``.yaml``/``.yml`` or ``.json``."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe={str(path)!r} does not exist; pass the path of a .yaml or .json recipe "
                              f"(every run writes one: runs/<name>/recipe.yaml)")
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"recipe={str(path)!r} cannot be read ({exc.strerror}); check its permissions") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is None or "\x00" in text:
            raise ConfigError(f"recipe={str(path)!r} is a binary file, not a YAML/JSON recipe; pass the recipe.yaml "
                              f"a run wrote (runs/<name>/recipe.yaml) or write one (docs/cli.md, recipes)")
        if not text.strip() or all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()):
            raise ConfigError(f"recipe={str(path)!r} is empty; write at least one key (e.g. method: l1-filter), "
                              f"or run without --recipe for the default job")
        if path.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"recipe={str(path)!r} is not valid JSON: {exc}") from None
        elif path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ConfigError(f"recipe={str(path)!r} is not valid YAML: {exc}") from None
        else:
            raise ConfigError(f"recipe={str(path)!r}: unknown extension {path.suffix!r}; use .yaml, .yml or .json")
        if data is None:
            raise ConfigError(f"recipe={str(path)!r} is empty; write at least one key (e.g. method: l1-filter), "
                              f"or run without --recipe for the default job")
        return cls.from_dict(data, source=f"recipe {str(path)!r}")

    def override(self, **changes: Any) -> "Recipe":
        """A copy with ``changes`` applied; ``None`` values (flags not given) are skipped."""
        changes = {k: v for k, v in changes.items() if v is not None}
        _check_keys(changes, "override")
        if "ignore" in changes:
            changes["ignore"] = tuple(changes["ignore"])
        if isinstance(changes.get("keep_outputs"), list):
            changes["keep_outputs"] = tuple(changes["keep_outputs"])
        return dataclasses.replace(self, **changes)

    # --- output ------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["ignore"] = list(self.ignore)
        if isinstance(self.keep_outputs, tuple):
            data["keep_outputs"] = list(self.keep_outputs)
        return {"type": RECIPE_TYPE, "version": RECIPE_VERSION, **data}

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the recipe as YAML (or JSON for a ``.json`` path), atomically."""
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2) if path.suffix.lower() == ".json" else self.to_yaml()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        return path

    @property
    def target_kind(self) -> str:
        return parse_target(self.target, latency=True)[0]

    @property
    def target_value(self) -> float:
        return parse_target(self.target, latency=True)[1]


def _check_keys(data: dict, source: str) -> None:
    valid = Recipe.fields()
    bad = [k for k in data if k not in valid]
    if bad:
        parts = []
        for key in bad:
            hint = closest(str(key), valid)
            parts.append(f"unknown key {key!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
        raise ConfigError(f"{source}: " + "; ".join(parts) + f". Valid keys: {', '.join(valid)}; "
                          f"remove or rename the key")
