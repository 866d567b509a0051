"""A forward without weight arithmetic: which values are made up, and the reads that would use them.

The engine needs shapes and the op graph, not values. A fast trace (``record(..., fast=True)``) therefore
skips the arithmetic of the costly ops that read a weight (convolutions and matrix products with a parameter
operand): their output shape comes from torch's meta kernels and their values are zeros. Everything else
(attention scores between activations, masks, index arithmetic, buffers such as rotary tables) still runs
for real. Values derived from a skipped op are *made up*; :class:`_Values` follows them through memory, and
an op or a Python read that would use one to steer the forward (a Python bool, a ``topk`` or ``nonzero``
selection, a computed index, ``tolist()``) ends such a trace (:class:`MadeUpValue`).
"""
from __future__ import annotations

import contextlib
import contextvars
import weakref

import torch
from torch import nn

from ..errors import TraceError
from .tensors import _tensors, _walk_outputs


# ops whose arithmetic a fast trace skips when one operand is a weight (see the module docstring)
# (functional overloads only: an ``out=`` variant must write its output tensor)
_WEIGHT_OPS = frozenset({torch.ops.aten.convolution.default, torch.ops.aten.addmm.default, torch.ops.aten.mm.default,
                         torch.ops.aten.bmm.default, torch.ops.aten.baddbmm.default})


def _reads_weight(args) -> bool:
    for a in args:
        if isinstance(a, nn.Parameter) or isinstance(getattr(a, "_base", None), nn.Parameter):
            return True
    return False


def _to_meta(x):
    if isinstance(x, torch.Tensor):
        return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta")
    if isinstance(x, (list, tuple)):
        return type(x)(_to_meta(y) for y in x)
    return x


def _check_conv_shapes(args):
    """What the CPU convolution kernel checks and its meta kernel does not: the input's channels against a
    transposed weight, a weight's dim 0 against the groups, and the bias length."""
    x, w, b = args[0], args[1], args[2]
    transposed, groups = args[6], args[8]
    if w.shape[0] % groups:
        raise RuntimeError(f"convolution: weight {tuple(w.shape)} has a dim 0 not divisible by groups={groups}")
    want_in = w.shape[0] if transposed else w.shape[1] * groups
    out_ch = w.shape[1] * groups if transposed else w.shape[0]
    if x.dim() > 1 and x.shape[1] != want_in:
        raise RuntimeError(f"convolution: input has {x.shape[1]} channels, weight {tuple(w.shape)} (groups={groups}, "
                           f"transposed={transposed}) expects {want_in}")
    if b is not None and b.numel() != out_ch:
        raise RuntimeError(f"convolution: bias has {b.numel()} entries for {out_ch} output channels")


_ADDMM = torch.ops.aten.addmm.default


def _zeros_like_result(func, args, kwargs):
    """What ``func(*args, **kwargs)`` returns, in shape, strides, dtype and device, filled with zeros."""
    if func is torch.ops.aten.convolution.default:
        _check_conv_shapes(args)
    if func is _ADDMM and args[0].dtype == args[1].dtype == args[2].dtype:
        # addmm's meta kernel is a Python reference, far slower than mm's: the product's shape from mm's,
        # and the bias must broadcast to it (the result is a new contiguous matrix either way)
        bias = args[0]
        out = torch.ops.aten.mm.default(_to_meta(args[1]), _to_meta(args[2]))
        if torch.broadcast_shapes(tuple(bias.shape), tuple(out.shape)) != tuple(out.shape):
            raise RuntimeError(f"addmm: bias of shape {tuple(bias.shape)} does not broadcast to {tuple(out.shape)}")
    else:
        out = func(*_to_meta(args), **{k: _to_meta(v) for k, v in kwargs.items()})
    device = next(_tensors(list(args))).device
    return torch.empty_strided(out.shape, out.stride(), dtype=out.dtype, device=device).zero_()


def _aten(names) -> frozenset:
    return frozenset(getattr(torch.ops.aten, n) for n in names if hasattr(torch.ops.aten, n))


# ops whose result can steer the forward (Python control flow, data-dependent shapes, selections): fed a value
# that a fast trace made up, they end it, and prune_ traces with real values instead
_VALUE_READERS = _aten(("_local_scalar_dense", "is_nonzero", "nonzero", "nonzero_static", "masked_select",
                        "_unique2", "unique_consecutive", "unique_dim", "topk", "sort", "argsort", "argmax",
                        "argmin", "kthvalue", "mode", "bincount", "histc", "searchsorted", "bucketize",
                        "equal", "multinomial"))
_VALUE_READER_OVERLOADS = frozenset([*(getattr(getattr(torch.ops.aten, n), "dim") for n in ("max", "min", "median",
                                                                                             "nanmedian")),
                                     torch.ops.aten.repeat_interleave.Tensor])  # counts -> output length
# ops that select by an index tensor: a made-up integer or boolean index ends a fast trace too
_INDEXING = _aten(("index", "index_select", "gather", "take", "index_put", "index_put_", "scatter", "scatter_",
                   "scatter_add", "scatter_add_", "scatter_reduce", "scatter_reduce_", "index_add", "index_add_",
                   "index_copy", "index_copy_", "index_fill", "index_fill_", "embedding", "_embedding_bag"))


class MadeUpValue(TraceError):
    """A fast trace reached an op whose result depends on values it did not compute."""


def _storage_key(t: torch.Tensor):
    """The address of ``t``'s storage (shared by all its views), or None for a tensor without one."""
    if not t.numel():
        return None
    try:
        return t.data_ptr() - t.storage_offset() * t.element_size()
    except RuntimeError:  # no storage (sparse, nested, functional wrappers)
        return None


class _Values:
    """What a forward without weight arithmetic knows about its tensors' values.

    *Made up* is a property of memory: a storage holds made-up values once a skipped op, or any op fed a
    made-up value, writes into it, and so does every view of it, whenever taken (an in-place write through
    one view reaches the others). A fresh output that an op computed from real values only is real.

    *Accounted*: every tensor an op receives must be a parameter, a buffer, an example input, a constant
    made in the forward (``torch.tensor``) or the output of an op this forward issued; only then are all the
    paths by which made-up values travel seen. Anything else (a tensor cached in a module attribute by an
    earlier forward, a C++ extension's output) is listed in ``unaccounted``, and the caller then confirms
    the forward with real values.

    While a forward runs under :func:`_python_reads_checked`, the reads that bypass the dispatcher
    (``tolist``, ``numpy``, ``__array__``, ``__dlpack__``) are checked too.
    """

    def __init__(self, trusted=()):
        self.made_up: set = set()
        self.seen: dict = {}  # id -> weakref of the tensors ops produced
        self._trusted = [t for t in trusted if isinstance(t, torch.Tensor)]  # kept alive: ids stay unique
        self.trusted = {id(t) for t in self._trusted}
        self.unaccounted: list[str] = []

    def is_made_up(self, t) -> bool:
        return _storage_key(t) in self.made_up

    def _accounted(self, t) -> bool:
        if id(t) in self.trusted or isinstance(t, nn.Parameter) or not t.dim():  # 0-dim: Python scalars
            return True
        r = self.seen.get(id(t))
        return r is not None and r() is t

    def _note(self, t, where: str):
        if len(self.unaccounted) < 20:
            self.unaccounted.append(f"{where}: a {tuple(t.shape)} tensor of unknown origin")

    def python_read(self, t, how: str):
        if self.is_made_up(t):
            raise MadeUpValue(f"Tensor.{how} reads values the fast trace did not compute", op=how)
        if not self._accounted(t):
            self._note(t, f"Tensor.{how}")

    def call(self, func, args, kwargs):
        """``func`` without weight arithmetic: weight-reading convs and matmuls are not computed, and an op
        that would read a made-up value to steer the forward raises ``MadeUpValue``."""
        ins = list(_tensors(list(args) + list(kwargs.values())))
        made_up_ins = []
        in_keys = set()
        for t in ins:
            k = _storage_key(t)
            in_keys.add(k)
            if k in self.made_up:
                made_up_ins.append(t)
            if func is not _LIFT_FRESH and not self._accounted(t):
                self._note(t, str(func))
        if made_up_ins and (func.overloadpacket in _VALUE_READERS or func in _VALUE_READER_OVERLOADS or (
                func.overloadpacket in _INDEXING and any(not t.is_floating_point() for t in made_up_ins))):
            raise MadeUpValue(f"{func} reads values the fast trace did not compute", op=str(func))
        skipped = func in _WEIGHT_OPS and _reads_weight(args)
        out = _zeros_like_result(func, args, kwargs) if skipped else func(*args, **kwargs)
        tainted = skipped or (bool(made_up_ins) and func.overloadpacket not in _FRESH_VALUES)
        for t in _tensors(out):
            k = _storage_key(t)
            if k is not None:
                if tainted:
                    self.made_up.add(k)
                elif k not in in_keys:  # fresh memory an op filled from real values
                    self.made_up.discard(k)
            try:
                self.seen[id(t)] = weakref.ref(t)
            except TypeError:
                self._trusted.append(t)
                self.trusted.add(id(t))
        return out


# ops that take a tensor for its shape only: their values do not derive from its values
_FRESH_VALUES = _aten(("zeros_like", "ones_like", "full_like", "empty_like", "new_zeros", "new_ones", "new_full",
                       "new_empty", "rand_like", "randn_like", "randint_like"))
_LIFT_FRESH = torch.ops.aten.lift_fresh.default  # torch.tensor(...) in a forward: its input is a new constant
_ACTIVE_VALUES: contextvars.ContextVar = contextvars.ContextVar("prunekit_active_values", default=None)
_PYTHON_READS = ("tolist", "numpy", "__dlpack__")  # Tensor.__array__ goes through numpy()
_read_guards: list = []  # [depth, {name: original or None}] while installed


def _guard(name: str, original):
    def method(self, *args, **kwargs):
        values = _ACTIVE_VALUES.get()
        if values is not None:
            values.python_read(self, name)
        return original(self, *args, **kwargs)

    method.__name__ = name
    return method


@contextlib.contextmanager
def _python_reads_checked(values: _Values):
    """Inside the block, this thread's ``Tensor.tolist/numpy/__dlpack__`` calls are checked by ``values``
    (the methods are wrapped only while some fast forward runs; other threads pass straight through)."""
    if not _read_guards:
        saved = {n: torch.Tensor.__dict__.get(n) for n in _PYTHON_READS}
        for n in _PYTHON_READS:
            setattr(torch.Tensor, n, _guard(n, getattr(torch.Tensor, n)))
        _read_guards.extend([0, saved])
    _read_guards[0] += 1
    token = _ACTIVE_VALUES.set(values)
    try:
        yield
    finally:
        _ACTIVE_VALUES.reset(token)
        _read_guards[0] -= 1
        if not _read_guards[0]:
            for n, orig in _read_guards[1].items():
                if orig is None:
                    delattr(torch.Tensor, n)
                else:
                    setattr(torch.Tensor, n, orig)
            _read_guards.clear()


def _trusted_tensors(model: nn.Module, example_inputs) -> list:
    out = list(model.buffers())
    _walk_outputs(example_inputs, out.append)
    return out
