"""The method registry: one entry per paper of the seed list, each with its metadata, config and status.

The catalogue (``catalog.json``: id, title, venue, year, type of all 93 papers) says *what* exists; an
implementation registers itself with :func:`register_method` and so decides the status shown by
``prunekit methods``. A paper without a registered implementation has status ``not-yet``.

A method is ``fn(ctx: RunContext, cfg: Config) -> MethodResult`` plus a frozen config dataclass whose defaults
are the paper's hyper-parameters. Everything else every method needs (options resolved into the config, the
target parsed, data needs and reachability checked, the device, the transaction, telemetry checks) is the
harness's job (:mod:`prunekit.methods._harness`); ``MethodSpec.run(ctx)`` goes through it.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Callable, Literal

from .._registry import Registry, unknown_name_message
from ..errors import ConfigError
from ._config import MethodConfig, config_to_dict, resolve_config

Status = Literal["implemented", "partial", "not-meaningful", "not-yet"]
Kind = Literal["structured", "unstructured", "other"]
_STATUSES = ("implemented", "partial", "not-meaningful")
_KINDS = ("structured", "unstructured", "other")
_NEEDS = ("calib", "train", "val")


@dataclass
class RunContext:
    """Everything a method needs to run end to end; built by ``prunekit run`` / ``prunekit bench`` or by hand.

    ``target`` is a string: ``"macs=0.5"`` / ``"params=0.25"`` (fraction the pruned model *keeps*) for
    structured methods, ``"sparsity=0.9"`` (fraction of weights removed) for unstructured ones; the harness
    parses it once into ``target_kind``/``target_value``. ``train_data``/``val_data`` are iterables of
    ``(inputs, targets)`` batches; ``calib`` a short list of such batches. ``prune_epochs`` is the training
    budget of training-time methods (regularise/search before the cut); the shared fine-tune after the method
    is the caller's job, with ``MethodResult.callbacks``.
    """

    model: Any
    example_inputs: Any
    target: str
    train_data: Any = None
    val_data: Any = None
    calib: Any = None
    ignore: tuple = ()
    prune_epochs: int = 1  # epochs of training a training-time method may spend before the cut
    train_config: Any = None  # prunekit.train.TrainConfig for those epochs (lr, optimizer, ...)
    device: str = "cpu"
    seed: int = 0
    options: Any = field(default_factory=dict)  # overrides of the method's config fields (or a config object)
    keep_outputs: Any = "all"  # the outputs whose shapes the cut must keep (names/indices); "all": every one
    target_kind: str = field(default="", init=False)  # set by the harness: "macs" | "params" | "sparsity"
    target_value: float = field(default=0.0, init=False)


@dataclass
class MethodResult:
    model: Any  # the pruned model (usually the same object, modified in place)
    callbacks: list = field(default_factory=list)  # prunekit.train callbacks to use while fine-tuning
    info: dict = field(default_factory=dict)  # method-specific numbers, JSON-serialisable
    telemetry: dict = field(default_factory=dict)  # the figures that show the mechanism acted
    engaged: bool | None = None  # set by the harness from the method's Telemetry.engaged
    warnings: list = field(default_factory=list)  # set by the harness: mechanism not engaged, and the knob


@dataclass(frozen=True)
class Telemetry:
    """What shows a method's mechanism acted: the keys its result reports, a test on them, the knob to turn.

    ``engaged(telemetry) -> bool`` is evaluated by the harness after the method ran; when it is false the run
    ends with a warning ``"<method>: <what> did not happen; <knob>"``.
    """

    keys: tuple[str, ...]
    engaged: Callable[[dict], bool]
    what: str  # the mechanism in a few words, e.g. "BN scales driven to exactly zero"
    knob: str  # what to turn when it did not act, e.g. "raise options.strength or prune_epochs"


@dataclass(frozen=True)
class MethodSpec:
    id: str
    fn: Callable[..., Any]
    config: type = MethodConfig  # frozen dataclass; its field defaults are the paper's hyper-parameters
    status: str = "implemented"  # implemented | partial | not-meaningful
    kind: str = "structured"  # structured | unstructured | other
    left_out: str = ""  # for partial / not-meaningful: what the implementation leaves out, and why
    needs: tuple[str, ...] = ()  # data the method cannot run without: "calib", "train", "val"
    telemetry: Telemetry | None = None
    module: str = ""
    smoke: dict = field(default_factory=dict)  # options that make a tiny run cheap (contract tests, smoke runs)
    targets: tuple[str, ...] = ()  # target kinds it takes when narrower than its kind's (e.g. ("macs",)); () = all
    targets_why: str = ""  # why only those, for the error message (e.g. "its cost loss prices FLOPs")

    @property
    def defaults(self) -> dict:
        """The paper's hyper-parameters: the config's defaults as a plain dict."""
        return config_to_dict(self.config())

    @property
    def needs_data(self) -> bool:
        return bool(self.needs)

    def resolve(self, overrides) -> MethodConfig:
        """The config with ``overrides`` applied; unknown keys and bad values are one ``ConfigError``."""
        return resolve_config(self.config, overrides, self.id)

    def options(self, overrides) -> dict:
        """The resolved config as a plain dict (what reports and recipes record)."""
        return config_to_dict(self.resolve(overrides))

    def run(self, ctx: RunContext) -> MethodResult:
        """Run the method on ``ctx`` through the harness (checks, device, transaction, telemetry)."""
        from ._harness import run_method

        return run_method(self, ctx)


def _validate(name: str, spec: MethodSpec) -> None:
    if name not in catalog() and name not in beyond_catalog():
        raise ConfigError(unknown_name_message("paper id", name, {**catalog(), **beyond_catalog()}, "register_method"))
    if spec.status not in _STATUSES:
        raise ConfigError(f"status={spec.status!r} for method {name!r}; choose one of {_STATUSES}")
    if spec.kind not in _KINDS:
        raise ConfigError(f"kind={spec.kind!r} for method {name!r}; choose one of {_KINDS}")
    if spec.status != "implemented" and not spec.left_out:
        raise ConfigError(f"method {name!r} has status {spec.status!r}: say what is left out (left_out=...)")
    if spec.targets and not set(spec.targets) <= {"macs", "params", "sparsity"}:
        raise ConfigError(f"targets={spec.targets!r} for method {name!r}: choose among 'macs', 'params', 'sparsity'")
    if spec.targets and not spec.targets_why:
        raise ConfigError(f"method {name!r} takes only targets {spec.targets}: say why (targets_why=...)")
    bad = [n for n in spec.needs if n not in _NEEDS]
    if bad:
        raise ConfigError(f"needs={spec.needs!r} for method {name!r}: unknown {bad}; choose from {_NEEDS}")
    if not (isinstance(spec.config, type) and dataclasses.is_dataclass(spec.config)
            and issubclass(spec.config, MethodConfig) and spec.config.__dataclass_params__.frozen):
        raise ConfigError(f"config={spec.config!r} for method {name!r}: pass a frozen dataclass subclassing "
                          f"prunekit.methods.MethodConfig")
    try:
        spec.config()
        if spec.smoke:
            spec.resolve(spec.smoke)
    except TypeError as e:
        raise ConfigError(f"config {spec.config.__name__} of method {name!r}: every field needs a default "
                          f"(the paper's value): {e}") from None


METHODS: Registry[MethodSpec] = Registry("method", validate=_validate)


def register_method(
    id: str,
    *,
    config: type = MethodConfig,
    status: str = "implemented",
    kind: str = "structured",
    left_out: str = "",
    needs: tuple[str, ...] = (),
    telemetry: Telemetry | None = None,
    smoke: dict | None = None,
    targets: tuple[str, ...] = (),
    targets_why: str = "",
):
    """Register ``fn(ctx: RunContext, cfg: config) -> MethodResult`` as the implementation of paper ``id``.

    ``needs`` names the data the method cannot run without, ``telemetry`` what shows its mechanism acted, and
    ``smoke`` the options that make a run on a tiny setting cheap (e.g. fewer inner iterations); the registry's
    contract tests run every method with them, and they are checked against the config at registration.
    ``targets`` narrows the target kinds the method takes (e.g. ``("macs",)`` for a method whose loss prices
    FLOPs), with ``targets_why`` saying why; the harness refuses any other target before the method runs.

    Example:
        >>> from dataclasses import dataclass
        >>> from prunekit.methods import MethodConfig, register_method
        >>> @dataclass(frozen=True)
        ... class L1Config(MethodConfig):
        ...     allocation: str = "uniform"  # same fraction per layer (Li et al. 2017, section 3)
        >>> @register_method("l1-filter", config=L1Config)  # doctest: +SKIP
        ... def run(ctx, cfg): ...
    """

    def deco(fn: Callable[..., MethodResult]):
        spec = MethodSpec(id=id, fn=fn, config=config, status=status, kind=kind, left_out=left_out,
                          needs=tuple(needs), telemetry=telemetry, module=getattr(fn, "__module__", ""),
                          smoke=dict(smoke or {}), targets=tuple(targets), targets_why=targets_why)
        METHODS.register(id)(spec)
        return fn

    return deco


@lru_cache(maxsize=1)
def catalog() -> dict[str, dict]:
    """All papers of the seed list: ``{id: {title, venue, year, type}}`` in list order."""
    text = resources.files("prunekit.methods").joinpath("catalog.json").read_text()
    return {row["id"]: row for row in json.loads(text)}


@lru_cache(maxsize=1)
def beyond_catalog() -> dict[str, dict]:
    """Methods beyond the seed list (published after it, e.g. for language models): same fields, their own
    section in ``prunekit methods``."""
    text = resources.files("prunekit.methods").joinpath("beyond.json").read_text()
    return {row["id"]: row for row in json.loads(text)}


def get_method(id: str) -> MethodSpec:
    if id not in catalog() and id not in beyond_catalog():
        METHODS.get(id, argument="method")  # raises with the closest registered name
    if id not in METHODS:
        raise ConfigError(f"method {id!r} is in the catalogue but not implemented yet; "
                          f"see `prunekit methods` for the implemented ones")
    return METHODS.get(id)
