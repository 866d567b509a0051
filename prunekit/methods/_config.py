"""Typed method configs: a frozen dataclass per paper whose field defaults are the paper's hyper-parameters.

A method declares its config once::

    @dataclass(frozen=True)
    class SFPConfig(MethodConfig):
        criterion: Literal["l2", "fpgm"] = "l2"  # filter score; l2 in the paper, fpgm its geometric-median variant
        interval: int = option(1, ge=1)          # epochs between re-selections (paper: every epoch)

and :func:`resolve_config` turns options from Python, a recipe or ``--option KEY=VALUE`` into an instance:
unknown keys are refused with the closest name, values are checked against the field's type (``Literal``
choices with the closest valid value, numbers against their bounds) and every problem is reported at once.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Mapping, get_args, get_origin, get_type_hints

from .._registry import closest, unknown_name_message
from ..errors import ConfigError

__all__ = ["MethodConfig", "option", "resolve_config", "config_fields", "config_to_dict"]


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Base of every method config (frozen; the harness builds it, a method only reads it)."""


def option(default: Any, *, gt: float | None = None, ge: float | None = None, lt: float | None = None,
           le: float | None = None) -> Any:
    """A config field with numeric bounds checked when options are resolved.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class C(MethodConfig):
        ...     lr: float = option(0.1, gt=0)  # step size
        >>> resolve_config(C, {"lr": 0.5}, "demo").lr
        0.5
    """
    bounds = {k: v for k, v in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le)) if v is not None}
    if isinstance(default, (list, dict, set)):
        raise TypeError(f"option(default={default!r}): a mutable default; use a tuple")
    return dataclasses.field(default=default, metadata={"bounds": bounds})


def config_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def config_to_dict(cfg: MethodConfig) -> dict:
    """The config's fields as plain JSON-ready values (tuples become lists)."""
    out = {}
    for name in config_fields(type(cfg)):
        v = getattr(cfg, name)
        out[name] = list(v) if isinstance(v, tuple) else v
    return out


def _type_name(tp) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp) -> Any:
    """``value`` converted to ``tp`` when that is lossless, else raise ``TypeError``/``ValueError``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = get_args(tp)
        if value in choices and type(value) in {type(c) for c in choices}:
            return value
        hint = closest(str(value), [str(c) for c in choices])
        raise ValueError(f"is not one of {list(choices)}" + (f"; did you mean {hint!r}?" if hint else ""))
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a)
            except (TypeError, ValueError) as e:
                errors.append(str(e))
        raise TypeError(f"must be {' or '.join(_type_name(a) for a in args)}")
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"must be a list, got {type(value).__name__}")
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return tuple(_coerce(v, args[0]) for v in value) if args else tuple(value)
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise TypeError(f"must be a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"must be true or false, got {type(value).__name__}")
    if tp is int:
        if isinstance(value, bool):
            raise TypeError("must be an integer, got a bool")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeError(f"must be an integer, got {type(value).__name__}")
    if tp is float:
        if isinstance(value, bool):
            raise TypeError("must be a number, got a bool")
        if isinstance(value, (int, float)):
            if not math.isfinite(float(value)):
                raise ValueError("must be finite")
            return float(value)
        raise TypeError(f"must be a number, got {type(value).__name__}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError(f"must be a string, got {type(value).__name__}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise TypeError(f"must be {_type_name(tp)}, got {type(value).__name__}")


def _check_bounds(value, bounds: dict) -> str | None:
    if not bounds or not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    tests = {"gt": (lambda v, b: v > b, ">"), "ge": (lambda v, b: v >= b, ">="),
             "lt": (lambda v, b: v < b, "<"), "le": (lambda v, b: v <= b, "<=")}
    failed = [f"{sym} {b}" for k, b in bounds.items() for ok, sym in [tests[k]] if not ok(value, b)]
    return f"must be {' and '.join(failed)}" if failed else None


def resolve_config(cls: type, options: Mapping | None, method: str) -> MethodConfig:
    """``cls`` built from its defaults and ``options``; one ``ConfigError`` lists every bad key or value."""
    if isinstance(options, MethodConfig):
        if not isinstance(options, cls):
            raise ConfigError(f"options={type(options).__name__}(...) for method {method!r}; pass a "
                              f"{cls.__name__} or a dict of its fields")
        return options
    options = dict(options or {})
    fields = config_fields(cls)
    hints = get_type_hints(cls)
    problems, values = [], {}
    for key, raw in options.items():
        if key not in fields:
            problems.append(unknown_name_message(f"option of method {method!r}", key, fields))
            continue
        try:
            value = _coerce(raw, hints[key])
        except (TypeError, ValueError) as e:
            problems.append(f"method {method!r}: options[{key!r}]={raw!r} {e} "
                            f"(type {_type_name(hints[key])}, default {fields[key].default!r})")
            continue
        bad = _check_bounds(value, fields[key].metadata.get("bounds", {}))
        if bad:
            problems.append(f"method {method!r}: options[{key!r}]={raw!r} {bad} (default {fields[key].default!r})")
            continue
        values[key] = value
    if problems:
        raise ConfigError("; ".join(problems))
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:  # a cross-field check in __post_init__
        raise ConfigError(f"method {method!r}: {e}") from None
