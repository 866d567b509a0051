"""User handlers: how a custom module or aten op maps channels (:func:`register_handler`).

The recorder (:func:`.trace.record`) runs a module with a handler as a black box and asks the handler for
its output's labels; an op with a handler bypasses the built-in rules (:mod:`.rules`).
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..errors import ConfigError

_MODULE_HANDLERS: dict[type, Callable] = {}
_OP_HANDLERS: dict[str, Callable] = {}


def register_handler(target, fn: Callable | None = None, *, overwrite: bool = False):
    """Declare how a custom module (or aten op) maps channels; usable as a decorator.

    For an ``nn.Module`` subclass the module runs as a black box and ``fn(rec, module, fqn, inputs,
    output)`` sets the labels of ``output`` from those of ``inputs`` and the module's parameters with
    ``rec.get(tensor)``, ``rec.couple(a, b)``, ``rec.kill(label, reason)`` and ``rec.set(tensor, labels)``.
    For an op (an ``OpOverload``/packet or its name such as ``"mylib.fused_gate"``) ``fn(rec, args,
    kwargs, out)`` does the same. Tensors a handler leaves unset carry nothing prunable. Registering a second
    handler for the same target is an error unless ``overwrite=True``.

    Example:
        >>> import torch
        >>> from prunekit.graph import register_handler
        >>> class Scale(torch.nn.Module):
        ...     def forward(self, x):
        ...         return x * 2
        >>> @register_handler(Scale)
        ... def _scale(rec, module, fqn, inputs, output):
        ...     rec.set(output, rec.get(inputs[0]))
        >>> Scale in __import__("prunekit.graph", fromlist=["x"]).handlers()
        True
    """

    def deco(f):
        if isinstance(target, type) and issubclass(target, nn.Module):
            table, key = _MODULE_HANDLERS, target
        elif isinstance(target, str) or hasattr(target, "name") or hasattr(target, "_qualified_op_name"):
            table, key = _OP_HANDLERS, _op_key(target)
        else:
            raise ConfigError(
                f"register_handler(target={target!r}): expected an nn.Module subclass, an aten op or an op "
                f"name such as 'mylib.my_op'; pass one of those")
        if key in table and not overwrite:
            raise ConfigError(f"register_handler(target={target!r}): a handler is already registered for it "
                              f"({getattr(table[key], '__name__', table[key])}); pass overwrite=True to replace it")
        table[key] = f
        return f

    if fn is not None:
        return deco(fn)
    return deco


def handlers() -> dict:
    """Registered user handlers: module types and op names."""
    return {**_MODULE_HANDLERS, **_OP_HANDLERS}


def _op_key(op) -> str:
    if isinstance(op, str):
        return op.replace("::", ".").split(".default")[0]
    name = getattr(op, "_qualified_op_name", None) or str(op)
    name = name.replace("::", ".")
    if hasattr(op, "overloadpacket"):
        name = str(op.overloadpacket)
    return name

