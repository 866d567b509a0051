"""Record one real forward at the aten level and propagate channel atoms through it.

A ``TorchDispatchMode`` sees every op after Python, autograd and composite decomposition ran: the op set
is closed (about a hundred rules cover real models), every functional use of a parameter is visible (the
parameter object itself reaches the mode), and views, in-place ops and einsum arrive as plain aten ops.
Global module forward hooks keep a stack of module FQNs, so each op knows the module that issued it.

The engine needs shapes and the op graph, not values. ``record(..., fast=True)`` therefore skips the
arithmetic of the costly ops that read a weight; values derived from them are *made up*, and an op or a
Python read that would use one to steer the forward ends such a trace (``MadeUpValue``; see :mod:`.values`).
The trace is trusted only after the pruned model's forward issued the same sequence of ops
(:func:`.oplog.op_log`). ``prunekit.prune_`` traces again with real values when either check fails.

This module is the recorder alone. The pieces it drives live beside it: :mod:`.recording` (the per-tensor
labels and constraints), :mod:`.handlers_registry` (user handlers), :mod:`.values` (the fast trace's value
tracking), :mod:`.oplog` (op sequences), :mod:`.tensors` (nested inputs and outputs) and :mod:`.mha` (the
attention twin); their names stay importable from here.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode

from ..errors import TraceError
from ._labels import ANY
from .handlers_registry import _MODULE_HANDLERS, _OP_HANDLERS, _op_key, handlers, register_handler  # noqa: F401
from .mha import PrunableMultiheadAttention, supported, unsupported_constraint
from .oplog import (_AS_VIEW, _LAYOUT_ONLY, _RESTRIDE, _LogMode, _OpLog, eval_mode, model_lock,  # noqa: F401
                    op_log, this_thread_module_hooks)
from .recording import MacOp, ModuleCall, Recording, SizeUse  # noqa: F401
from .rules import RULES
from .tensors import (_tensors, _walk_outputs, call_model, model_device, move_to,  # noqa: F401
                      resolve_keep_outputs, select_outputs)
from .values import (_ACTIVE_VALUES, _ADDMM, _FRESH_VALUES, _INDEXING, _LIFT_FRESH, _PYTHON_READS,  # noqa: F401
                     _VALUE_READER_OVERLOADS, _VALUE_READERS, _WEIGHT_OPS, MadeUpValue, _aten, _check_conv_shapes,
                     _guard, _python_reads_checked, _read_guards, _reads_weight, _storage_key, _to_meta,
                     _trusted_tensors, _Values, _zeros_like_result)

log = logging.getLogger(__name__)

# built-in constraints checked after a module's forward (the module's ops were recorded normally)
_MODULE_CONSTRAINTS: dict = {nn.MultiheadAttention: unsupported_constraint}

# ops by which a tensor's value leaves torch for Python (and so may steer the forward): Tensor.__bool__,
# item(), int()/float() of a tensor and torch.equal all reach the dispatcher as one of these
_SCALAR_READS = _aten(("_local_scalar_dense", "is_nonzero", "equal"))
# every traced forward appends its data-dependent reads here while a caller collects them (prunekit._checks)
_READ_NAMES = {"_local_scalar_dense": "a tensor value turned into a Python bool/int/float (if/item/int/float)",
               "is_nonzero": "a tensor value turned into a Python bool", "equal": "torch.equal"}
PYTHON_READS_SINK: contextvars.ContextVar = contextvars.ContextVar("prunekit_python_reads", default=None)


def note_python_read(rec, how: str):
    """Record that the traced forward turned a tensor value into a Python value (``how``) inside the
    module on top of the stack: a data-dependent branch the trace followed one way only."""
    how = _READ_NAMES.get(how, how)
    entry = f"{(rec.stack[-1] if rec.stack else '') or '<model>'}.forward: {how}"
    if entry not in rec.python_reads and len(rec.python_reads) < 20:
        rec.python_reads.append(entry)
        sink = PYTHON_READS_SINK.get()
        if sink is not None and entry not in sink:
            sink.append(entry)


class _ReadLog:
    """The Python reads (``tolist``/``numpy``/``__dlpack__``) of a traced forward: recorded as data-dependent
    reads, then checked by a fast trace's ``values`` (which refuses made-up values)."""

    def __init__(self, rec, values=None, mode=None):
        self.rec = rec
        self.values = values
        self.mode = mode

    def python_read(self, t, how: str):
        if self.mode is None or _get_current_dispatch_mode() is self.mode:  # the forward's read, not a rule's
            note_python_read(self.rec, f"Tensor.{how}")
        if self.values is not None:
            self.values.python_read(t, how)


class _Mode(TorchDispatchMode):
    def __init__(self, rec: Recording, rules: dict, fast: bool = False, values: _Values | None = None):
        super().__init__()
        self.rec = rec
        self.rules = rules
        self.opaque = 0
        self.errors: list[str] = []
        self.fast = fast
        self.log = _OpLog()
        self.values = values if values is not None else _Values()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.log.op(func)
        if func.overloadpacket in _SCALAR_READS:  # bool(t), t.item(), int(t), float(t), torch.equal
            note_python_read(self.rec, str(func.overloadpacket).rpartition(".")[2])
        if func is _RESTRIDE:  # the rule compares the layout before and after (see rules._restride)
            self.rec.strides_before = (tuple(args[0].stride()), args[0].storage_offset())
        out = self.values.call(func, args, kwargs) if self.fast else func(*args, **kwargs)
        if self.opaque:
            return out
        rec = self.rec
        rec.op_count += 1
        try:
            _apply_rule(rec, self.rules, func, args, kwargs, out)
        except MadeUpValue:  # a handler read a made-up value: only a real trace can tell
            raise
        except Exception as e:  # a rule bug must never turn into a wrong prune: kill what the op touched
            log.debug("rule for %s failed: %r", func, e)
            for t in _tensors(list(args) + list(kwargs.values())):
                if rec.known(t):
                    rec.kill_all(rec.get(t), f"{func.overloadpacket}: rule failed ({type(e).__name__}: {e})")
            for t in _tensors(out):
                rec.set(t, (None,) * t.dim())
        return out


_FACTORY_UNIFORM = {"zeros", "ones", "full", "empty", "empty_like", "zeros_like", "ones_like", "full_like",
                    "new_zeros", "new_ones", "new_full", "new_empty", "scalar_tensor", "empty_strided",
                    "empty_permuted", "rand_like", "randn_like"}


def _apply_rule(rec: Recording, rules: dict, func, args, kwargs, out):
    name = str(func.overloadpacket).replace("aten.", "", 1) if func.namespace == "aten" else \
        str(func.overloadpacket)
    ins = [t for t in _tensors(list(args) + list(kwargs.values()))]
    if name in _FACTORY_UNIFORM:  # new_zeros(x, size), zeros_like(x): values uniform, x gives dtype/shape only
        for t in _tensors(out):
            if t.dim():
                rec._store(t, (ANY,) * t.dim())
        return
    if not any(rec.known(t) for t in ins):
        return
    user = _OP_HANDLERS.get(str(func.overloadpacket)) or _OP_HANDLERS.get(name)
    if user is not None:
        user(rec, args, kwargs, out)
        return
    rec._cur = name
    rule = rules.get(name)
    if rule is None and torch.Tag.pointwise in func.tags:
        rule = rules["__pointwise__"]
    if rule is None:
        for t in ins:
            rec.kill_all(rec.get(t), f"no rule for op {name}")
        for t in _tensors(out):
            rec.set(t, (None,) * t.dim())
        return
    rule(rec, args, kwargs, out)


_KEEP_OUTPUTS: contextvars.ContextVar = contextvars.ContextVar("prunekit_keep_outputs", default="all")


@contextlib.contextmanager
def keep_outputs_scope(keep):
    """Inside the block every trace that leaves ``keep_outputs`` at ``"all"`` keeps only ``keep`` (the method
    harness runs a method inside one, so the method's own plans and cuts honour the user's choice)."""
    token = _KEEP_OUTPUTS.set(keep)
    try:
        yield
    finally:
        _KEEP_OUTPUTS.reset(token)


def record(model: nn.Module, example_inputs, *, ignore_modules: dict | None = None,
           rules: dict | None = None, inner_unit: frozenset = frozenset(),
           fast: bool = False, keep_outputs="all") -> tuple[Recording, Any]:
    """Trace one forward of ``model`` in eval mode without gradients; returns the recording and output.

    ``keep_outputs``: the outputs whose shapes pruning must keep (``"all"``, or names/indices of the top-level
    outputs, see :func:`.tensors.resolve_keep_outputs`); the keys are kept on ``rec.keep_keys``. ``"all"``
    inside a :func:`keep_outputs_scope` means the scope's choice.

    ``inner_unit``: indices of channel-splitting reshapes whose innermost dim is the unit (see Recording).
    ``fast``: skip the arithmetic of weight-reading convolutions and matrix products (module docstring);
    the output then has the right shapes but not the right values, and ``rec.ops`` must be checked
    against the real forward before the recording is trusted.
    """
    rec = Recording(model, ignore_modules)
    rec.inner_unit = frozenset(inner_unit)
    values = _Values(_trusted_tensors(model, example_inputs)) if fast else None
    mode = _Mode(rec, rules or RULES, fast=fast, values=values)
    rec.fast, rec.ops = fast, mode.log.ops
    rec.unaccounted = values.unaccounted if fast else []
    module_fqn = rec.module_fqn

    def pre(mod, args, kwargs=None):
        mode.log.enter(mod)
        fqn = module_fqn.get(id(mod))
        if fqn is None:
            return
        rec.stack.append(fqn)
        if fqn not in rec.module_calls:
            t = next(_tensors(list(args) + list((kwargs or {}).values())), None)
            if t is not None:
                rec.module_calls[fqn] = ModuleCall(tuple(t.shape), rec.get(t))
        if type(mod) in _MODULE_HANDLERS:
            mode.opaque += 1

    def post(mod, args, kwargs, output):
        mode.log.leave(mod)
        fqn = module_fqn.get(id(mod))
        if fqn is None:
            return
        if type(mod) in _MODULE_HANDLERS:
            mode.opaque -= 1
            if not mode.opaque:
                _MODULE_HANDLERS[type(mod)](rec, mod, fqn, list(_tensors(list(args) + list(kwargs.values()))),
                                            output)
        cons = _MODULE_CONSTRAINTS.get(type(mod))
        if cons is not None and not mode.opaque:
            cons(rec, mod, fqn, list(_tensors(list(args) + list(kwargs.values()))), output)
        if id(mod) in rec.ignore and not mode.opaque:
            _walk_outputs(output, lambda t: rec.kill_all(rec.get(t), f"output of ignored module {fqn!r}"))
        call = rec.module_calls.get(fqn)
        if call is not None and call._open:  # the first call's output
            call._open = False
            if isinstance(output, torch.Tensor):
                call.out_shape, call.out_labels = tuple(output.shape), rec.get(output)
        if rec.stack and rec.stack[-1] == fqn:
            rec.stack.pop()

    # plain nn.MultiheadAttention is traced through its op-by-op twin (same outputs, see graph.mha) so
    # that heads and embedding become prunable; the class is put back below: tracing changes nothing. The
    # model's lock is held throughout: another thread working on the same model waits (its class, flags)
    with model_lock(model):
        twins = [m for m in model.modules() if supported(m) and nn.MultiheadAttention not in _MODULE_HANDLERS]
        for m in twins:
            m.__class__ = PrunableMultiheadAttention
        # torch's fused encoder-layer kernel hides the attention from the trace: trace the regular path
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            with this_thread_module_hooks(pre, post, with_kwargs=True), eval_mode(model), torch.no_grad(), \
                    _python_reads_checked(_ReadLog(rec, values if fast else None, mode)), mode:
                output = call_model(model, example_inputs)
        except MadeUpValue:
            raise
        except Exception as e:
            raise TraceError(f"could not trace the model with the given example_inputs: {type(e).__name__}: {e}. "
                             f"Check that model(*example_inputs) runs (shapes, device, dtype).",
                             op="forward") from e
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
            for m in twins:
                m.__class__ = nn.MultiheadAttention
    rec.keep_keys = resolve_keep_outputs(output, _KEEP_OUTPUTS.get() if keep_outputs == "all" else keep_outputs)
    if rec.keep_keys is None:
        _walk_outputs(output, lambda t: rec.kill_all(rec.get(t), "reaches the model output"))
    else:
        for key, part in zip(rec.keep_keys, select_outputs(output, rec.keep_keys)):
            _walk_outputs(part, lambda t, key=key: rec.kill_all(rec.get(t), f"reaches the kept model output {key!r}"))
    return rec, output

