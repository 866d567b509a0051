"""The op sequence of a forward, compared with a trace's before the trace is trusted.

A fast trace (:mod:`.values`) is trusted only after the pruned model's forward issued the same sequence of
ops (:func:`op_log`): run the same way, without weight arithmetic, when every tensor's origin was followed,
and with real values otherwise (see ``surgery._validate``).
"""
from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.modules import module as _m
from torch.utils._python_dispatch import TorchDispatchMode

from .tensors import call_model
from .values import _python_reads_checked, _trusted_tensors, _Values


# layout-only ops whose presence depends on strides, which a removed dim can change (a reshape copies or not
# once heads go from 2 to 1; a keepdim reduction restrides its output): copies and restrides are left out of
# op sequences and a copying reshape reads as a view
_LAYOUT_ONLY = frozenset({torch.ops.aten.clone.default, torch.ops.aten.as_strided_.default})
_AS_VIEW = {torch.ops.aten._unsafe_view.default: torch.ops.aten.view.default}
_RESTRIDE = torch.ops.aten.as_strided_.default


class _OpLog:
    """The sequence of ops one forward issues, up to layout-only ops (``_LAYOUT_ONLY``); the ops inside an
    ``nn.MultiheadAttention`` call count as one entry (the engine traces it through its op-by-op twin, while
    the real forward may run torch's fused kernel)."""

    def __init__(self):
        self.ops: list = []
        self.hidden = 0

    def op(self, func):
        if not self.hidden and func not in _LAYOUT_ONLY:
            self.ops.append(_AS_VIEW.get(func, func))

    def enter(self, mod):
        if isinstance(mod, nn.MultiheadAttention):
            self.op("nn.MultiheadAttention")
            self.hidden += 1

    def leave(self, mod):
        if isinstance(mod, nn.MultiheadAttention):
            self.hidden -= 1


class _LogMode(TorchDispatchMode):
    def __init__(self, log_: _OpLog, values: _Values | None = None):
        super().__init__()
        self.log = log_
        self.values = values

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.log.op(func)
        if self.values is not None:
            return self.values.call(func, args, kwargs or {})
        return func(*args, **(kwargs or {}))


_MODEL_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock of one model object: a pass that changes the model's state for a while (training flags,
    gradients, hooks that read its forwards) holds it, so two threads working on the same model take turns
    instead of seeing each other's state; passes over different models still run at once. Re-entrant."""
    with _MODEL_LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.RLock()
        return lock


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """``model`` in eval mode inside the block, holding :func:`model_lock`; every module's own training flag is
    restored after it. Yields ``{module: training flag before}``."""
    with model_lock(model):
        training = {m: m.training for m in model.modules()}
        model.eval()
        try:
            yield training
        finally:
            for m, t in training.items():
                m.training = t


@contextlib.contextmanager
def this_thread_module_hooks(pre: Callable, post: Callable, *, with_kwargs: bool = False):
    """torch's global module hooks (``pre(mod, args)``, ``post(mod, args, out)`` or, ``with_kwargs``,
    ``post(mod, args, kwargs, out)``) for the block, called for the forwards of the thread that entered it only:
    global hooks see every module of every thread, and another thread's forward must not enter this one's
    record."""
    owner = threading.get_ident()

    def _pre(mod, args):
        if threading.get_ident() == owner:
            return pre(mod, args)

    if with_kwargs:
        def _post(mod, args, kwargs, out):
            if threading.get_ident() == owner:
                return post(mod, args, kwargs, out)
        h2 = _m.register_module_forward_hook(_post, with_kwargs=True)
    else:
        def _post(mod, args, out):
            if threading.get_ident() == owner:
                return post(mod, args, out)
        h2 = _m.register_module_forward_hook(_post)
    h1 = _m.register_module_forward_pre_hook(_pre)
    try:
        yield
    finally:
        h1.remove()
        h2.remove()


def op_log(model: nn.Module, example_inputs, fast: bool = False) -> tuple[Any, list, list]:
    """Run ``model`` (eval mode, no gradients) and return its output, the op sequence it issued, in the form
    ``Recording.ops`` has, and (``fast``) the tensors of unknown origin its ops received.

    ``fast``: as a fast trace runs it, without weight arithmetic (the output has the right shapes only) and
    with its value checks (``MadeUpValue``); torch's fused attention paths are off, as in a trace.
    """
    log_ = _OpLog()
    values = _Values(_trusted_tensors(model, example_inputs)) if fast else None
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        if fast:
            torch.backends.mha.set_fastpath_enabled(False)
        with this_thread_module_hooks(lambda mod, args: log_.enter(mod), lambda mod, args, out: log_.leave(mod)), \
                eval_mode(model), torch.no_grad(), \
                (_python_reads_checked(values) if fast else contextlib.nullcontext()), _LogMode(log_, values):
            out = call_model(model, example_inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return out, log_.ops, (values.unaccounted if fast else [])
