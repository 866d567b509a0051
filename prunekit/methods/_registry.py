"""The method registry: one entry per paper of the seed list, each with its metadata and status.

The catalogue (``catalog.json``: id, title, venue, year, type of all 93 papers) says *what* exists; an
implementation registers itself with :func:`register_method` and so decides the status shown by
``prunekit methods``. A paper without a registered implementation has status ``not-yet``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Callable, Literal

from .._registry import Registry, unknown_name_message
from ..errors import ConfigError

Status = Literal["implemented", "partial", "not-meaningful", "not-yet"]
Kind = Literal["structured", "unstructured", "other"]
_STATUSES = ("implemented", "partial", "not-meaningful")
_KINDS = ("structured", "unstructured", "other")


@dataclass
class RunContext:
    """Everything a method needs to run end to end; built by ``prunekit run`` / ``prunekit bench``.

    ``target`` is a string: ``"macs=0.5"`` / ``"params=0.25"`` (fraction the pruned model *keeps*) for
    structured methods, ``"sparsity=0.9"`` (fraction of weights removed) for unstructured ones.
    ``train_data``/``val_data`` are iterables of ``(inputs, targets)`` batches; ``calib`` a short list of
    such batches. ``prune_epochs`` is the training budget of training-time methods (regularise/search
    before the cut); the shared fine-tune after the method is the caller's job, with ``MethodResult.callbacks``.
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
    options: dict = field(default_factory=dict)  # method-specific overrides of MethodSpec.defaults


@dataclass
class MethodResult:
    model: Any  # the pruned model (usually the same object, modified in place)
    callbacks: list = field(default_factory=list)  # prunekit.train callbacks to use while fine-tuning
    info: dict = field(default_factory=dict)  # method-specific numbers, JSON-serialisable


@dataclass(frozen=True)
class MethodSpec:
    id: str
    run: Callable[[RunContext], MethodResult]
    status: str = "implemented"  # implemented | partial | not-meaningful
    kind: str = "structured"  # structured | unstructured | other
    left_out: str = ""  # for partial / not-meaningful: what the implementation leaves out, and why
    defaults: dict = field(default_factory=dict)  # the paper's hyper-parameters, overridable by options
    needs_data: bool = False  # True when the method needs calibration or training data
    module: str = ""

    def options(self, overrides: dict | None) -> dict:
        """The method's defaults updated with ``overrides``; unknown keys are an error."""
        overrides = dict(overrides or {})
        bad = sorted(set(overrides) - set(self.defaults))
        if bad:
            raise ConfigError(
                "; ".join(unknown_name_message(f"option of method {self.id!r}", k, self.defaults) for k in bad)
            )
        return {**self.defaults, **overrides}


def _validate(name: str, spec: MethodSpec) -> None:
    if name not in catalog():
        raise ConfigError(unknown_name_message("paper id", name, catalog(), "register_method"))
    if spec.status not in _STATUSES:
        raise ConfigError(f"status={spec.status!r} for method {name!r}; choose one of {_STATUSES}")
    if spec.kind not in _KINDS:
        raise ConfigError(f"kind={spec.kind!r} for method {name!r}; choose one of {_KINDS}")
    if spec.status != "implemented" and not spec.left_out:
        raise ConfigError(f"method {name!r} has status {spec.status!r}: say what is left out (left_out=...)")


METHODS: Registry[MethodSpec] = Registry("method", validate=_validate)


def register_method(
    id: str,
    *,
    status: str = "implemented",
    kind: str = "structured",
    left_out: str = "",
    defaults: dict | None = None,
    needs_data: bool = False,
):
    """Register ``fn(ctx: RunContext) -> MethodResult`` as the implementation of paper ``id``.

    Example:
        >>> from prunekit.methods import register_method  # doctest: +SKIP
        >>> @register_method("l1-filter", defaults={"criterion": "l1"})  # doctest: +SKIP
        ... def run(ctx): ...
    """

    def deco(fn: Callable[[RunContext], MethodResult]):
        spec = MethodSpec(
            id=id, run=fn, status=status, kind=kind, left_out=left_out, defaults=dict(defaults or {}),
            needs_data=needs_data, module=getattr(fn, "__module__", ""),
        )
        METHODS.register(id)(spec)
        return fn

    return deco


@lru_cache(maxsize=1)
def catalog() -> dict[str, dict]:
    """All papers of the seed list: ``{id: {title, venue, year, type}}`` in list order."""
    text = resources.files("prunekit.methods").joinpath("catalog.json").read_text()
    return {row["id"]: row for row in json.loads(text)}


def get_method(id: str) -> MethodSpec:
    if id not in catalog():
        METHODS.get(id, argument="method")  # raises with the closest registered name
    if id not in METHODS:
        raise ConfigError(f"method {id!r} is in the catalogue but not implemented yet; "
                          f"see `prunekit methods` for the implemented ones")
    return METHODS.get(id)
