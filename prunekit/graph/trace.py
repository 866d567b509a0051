"""Record one real forward at the aten level and propagate channel atoms through it.

A ``TorchDispatchMode`` sees every op after Python, autograd and composite decomposition ran: the op set
is closed (about a hundred rules cover real models), every functional use of a parameter is visible (the
parameter object itself reaches the mode), and views, in-place ops and einsum arrive as plain aten ops.
Global module forward hooks keep a stack of module FQNs, so each op knows the module that issued it.

The engine needs shapes and the op graph, not values. ``record(..., fast=True)`` therefore skips the
arithmetic of the costly ops that read a weight (convolutions and matrix products with a parameter
operand): their output shape comes from torch's meta kernels and their values are zeros. Everything else
(attention scores between activations, masks, index arithmetic, buffers such as rotary tables) still runs
for real. Values derived from a skipped op are *made up*; the trace follows them through memory
(:class:`_Values`), and an op or a Python read that would use one to steer the forward (a Python bool, a
``topk`` or ``nonzero`` selection, a computed index, ``tolist()``) ends such a trace (``MadeUpValue``).
The trace is trusted only after the pruned model's forward issued the same sequence of ops
(:func:`op_log`): run the same way, without weight arithmetic, when every tensor's origin was followed,
and with real values otherwise. ``prunekit.prune_`` traces again with real values when either check fails.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import weakref
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..errors import TraceError
from ._labels import ANY, ANY_ID, NONE_ID, as_array, is_labelled

log = logging.getLogger(__name__)


@dataclasses.dataclass
class MacOp:
    """One multiply-accumulate op: MACs = product of factors (ints, or label arrays counted by kept size)."""

    fqn: str
    op: str
    factors: list


@dataclasses.dataclass
class ModuleCall:
    """Labels of the first tensor input of a module's first call (shapes of modules without weights), and of
    its output when that is one tensor (which modules pass their input's shape through, see surgery)."""

    shape: tuple
    labels: tuple
    out_shape: tuple | None = None
    out_labels: tuple | None = None
    _open: bool = dataclasses.field(default=True, repr=False)


@dataclasses.dataclass
class SizeUse:
    """An integer size an op received (view/split sizes), with the labels of the dim it sized."""

    modules: tuple  # innermost first
    size: int
    labels: np.ndarray


class Recording:
    """The state of one traced forward: atoms, edges, deaths and the side records the engine needs."""

    def __init__(self, model: nn.Module, ignore_modules: dict | None = None):
        self.model = model
        self.param_fqn: dict[int, str] = {}
        self.tensors: dict[str, torch.Tensor] = {}
        for fqn, p in model.named_parameters():
            self.param_fqn.setdefault(id(p), fqn)
            self.tensors.setdefault(fqn, p)
        for fqn, b in model.named_buffers():
            if id(b) not in self.param_fqn:
                self.param_fqn[id(b)] = fqn
                self.tensors[fqn] = b
        self.module_fqn = {id(m): n for n, m in model.named_modules()}
        self.ignore = ignore_modules or {}  # id(module) -> fqn
        self.param_dims: list[tuple[str, int, int, int]] = []  # (fqn, dim, first atom, size)
        self.n_atoms = 0
        self._ea: list[np.ndarray] = []
        self._eb: list[np.ndarray] = []
        self.dead: list[tuple[np.ndarray, str]] = []
        self.approx: list[tuple[np.ndarray, str]] = []
        self.used: list[np.ndarray] = []
        self.roles: list[tuple[np.ndarray, str]] = []  # ("producer" | "consumer")
        self.mac_ops: list[MacOp] = []
        self.size_uses: list[SizeUse] = []
        self.module_calls: dict[str, ModuleCall] = {}
        self.stack: list[str] = []
        self._labels: dict[int, tuple] = {}  # id(tensor) -> (weakref, labels, is_param_view)
        self._keep: list = []  # tensors that cannot be weak-referenced stay alive for the trace
        self.op_count = 0
        self.fast = False  # values of weight-reading ops skipped (see record)
        self.strides_before: tuple = ((), 0)  # (strides, offset) of the tensor the current as_strided_ changes
        self.ops: list = []  # the op sequence of the traced forward (see op_log)
        self.unaccounted: list[str] = []  # a fast trace's tensors of unknown origin (see _Values)
        self.validated: str | None = None  # how surgery's validation forward ran: "fast" or "real"
        # data-dependent control flow: where a tensor value became a Python bool/int/float or was read out
        # ("<module fqn>: <how>"); the trace then covers the path these values chose (see note_python_read)
        self.python_reads: list[str] = []
        # reshapes that split one channel dim over several output dims ([B, P*C] -> [B, P, C]): the op's
        # index and the labels of the dim taken as the unit. By default the outer dim is the unit (whole
        # heads go); ops listed in ``inner_unit`` take the innermost dim instead (selective-kernel
        # attention multiplies by [paths, channels] logits per channel) -- see graph.build_graph
        self.inner_unit: frozenset = frozenset()
        self.split_units: list[tuple[int, np.ndarray]] = []

    # ---- labels ---------------------------------------------------------------------------------
    def param_atoms(self, t: torch.Tensor) -> tuple:
        fqn = self.param_fqn[id(t)]
        labs = []
        for d, n in enumerate(t.shape):
            self.param_dims.append((fqn, d, self.n_atoms, n))
            labs.append(np.arange(self.n_atoms, self.n_atoms + n, dtype=np.int64))
            self.n_atoms += n
        labs = tuple(labs)
        self._store(t, labs, True)
        return labs

    def get(self, t: torch.Tensor) -> tuple:
        e = self._labels.get(id(t))
        if e is not None and e[0]() is t:
            return e[1]
        if id(t) in self.param_fqn:
            return self.param_atoms(t)
        return (None,) * t.dim()

    def is_param_view(self, t) -> bool:
        e = self._labels.get(id(t))
        if e is not None and e[0]() is t:
            return e[2]
        return id(t) in self.param_fqn

    def known(self, t) -> bool:
        e = self._labels.get(id(t))
        return (e is not None and e[0]() is t) or id(t) in self.param_fqn

    def _store(self, t, labs, pv=False):
        try:
            ref = weakref.ref(t)
        except TypeError:  # pragma: no cover
            self._keep.append(t)
            ref = (lambda t=t: t)
        self._labels[id(t)] = (ref, labs, pv)

    def set(self, t, labs, param_view: bool = False):
        if not isinstance(t, torch.Tensor):
            return
        labs = tuple(labs)
        if len(labs) != t.dim():
            raise AssertionError(f"labels for {tuple(t.shape)} have {len(labs)} dims")
        if all(lab is None for lab in labs) and not param_view:
            e = self._labels.get(id(t))
            if e is not None:
                del self._labels[id(t)]
            return
        for lab, n in zip(labs, t.shape):
            if is_labelled(lab):
                if len(lab) != n:
                    raise AssertionError(f"label of length {len(lab)} on a dim of size {n}")
                self.used.append(lab)
        self._store(t, labs, param_view)

    # ---- constraints ----------------------------------------------------------------------------
    def kill(self, lab, reason: str):
        if is_labelled(lab):
            a = lab[lab >= 0]
            if len(a):
                self.dead.append((a, reason))

    def kill_all(self, labs, reason: str):
        for lab in labs:
            self.kill(lab, reason)

    def mark_approx(self, lab, reason: str):
        if is_labelled(lab):
            a = lab[lab >= 0]
            if len(a):
                self.approx.append((a, reason))

    def role(self, lab, role: str):
        if is_labelled(lab):
            a = lab[lab >= 0]
            if len(a):
                self.roles.append((a, role))

    def unify(self, a: np.ndarray, b: np.ndarray):
        m = (a >= 0) & (b >= 0)
        if m.any():
            self._ea.append(a[m])
            self._eb.append(b[m])

    def couple(self, a, b, n: int | None = None):
        """Position-wise coupling of two dims of equal size; returns the label of the result."""
        if not is_labelled(a) and not is_labelled(b):
            if a is None or b is None:
                return None
            return ANY
        if n is None:
            n = len(a) if is_labelled(a) else len(b)
        a = as_array(a, n)
        b = as_array(b, n)
        self.unify(a, b)
        self.kill(np.where(a == NONE_ID, b, -1), "coupled with unlabelled data (a model input or constant)")
        self.kill(np.where(b == NONE_ID, a, -1), "coupled with unlabelled data (a model input or constant)")
        return np.where(a == ANY_ID, b, a)

    def unify_rows(self, arr: np.ndarray, rows: int) -> np.ndarray:
        """Make every row of ``arr.reshape(rows, -1)`` one channel; returns one label per row."""
        m = arr.reshape(rows, -1)
        first = m[:, :1].repeat(m.shape[1], axis=1)
        self.unify(first.reshape(-1), m.reshape(-1))
        # a row mixing atoms with unlabelled data cannot be removed
        bad = (m == NONE_ID).any(axis=1)
        if bad.any():
            self.kill(m[bad].reshape(-1), "coupled with unlabelled data inside one block")
        out = m[:, 0].copy()
        out[bad] = NONE_ID
        for r in np.nonzero((out == ANY_ID) & (m >= 0).any(axis=1))[0]:
            out[r] = m[r][m[r] >= 0][0]
        return out

    def unify_cols(self, arr: np.ndarray, rows: int) -> np.ndarray:
        """Make position ``j`` of every row of ``arr.reshape(rows, -1)`` the same channel."""
        m = arr.reshape(rows, -1)
        res = m[0].copy()
        for r in range(1, rows):
            res = self.couple(res, m[r].copy())
        return res

    def mac(self, op: str, factors: list):
        self.mac_ops.append(MacOp(self.stack[-1] if self.stack else "", op, factors))

    def size_use(self, size: int, lab):
        if is_labelled(lab) and (lab >= 0).any():
            self.size_uses.append(SizeUse(tuple(reversed(self.stack)), int(size), lab))

    def edges(self):
        if not self._ea:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(self._ea), np.concatenate(self._eb)


# ---- user handlers -----------------------------------------------------------------------------
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
    from ..errors import ConfigError

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


def _mha_constraint(rec, mod, fqn, inputs, output):
    # plain instances are traced through their op-by-op twin (surgery.mha); the ones left here were built
    # with add_bias_kv or add_zero_attn, which the twin does not compute: all their dims stay
    reason = (f"nn.MultiheadAttention {fqn!r} with add_bias_kv/add_zero_attn: its heads and embedding are not "
              f"analysed; build it without those options (or with separate q/k/v projections) to prune them")
    for name, p in mod.named_parameters():
        if rec.known(p):
            rec.kill_all(rec.get(p), reason)
    for t in inputs:
        rec.kill_all(rec.get(t), reason)
    _walk_outputs(output, lambda t: rec.kill_all(rec.get(t), reason))


# built-in constraints checked after a module's forward (the module's ops were recorded normally)
_MODULE_CONSTRAINTS: dict[type, Callable] = {nn.MultiheadAttention: _mha_constraint}


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


# ---- the recorder --------------------------------------------------------------------------------
def _tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for y in x:
            yield from _tensors(y)


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


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """``model`` in eval mode inside the block; every module's own training flag is restored after it.
    Yields ``{module: training flag before}``."""
    training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield training
    finally:
        for m, t in training.items():
            m.training = t


def op_log(model: nn.Module, example_inputs, fast: bool = False) -> tuple[Any, list, list]:
    """Run ``model`` (eval mode, no gradients) and return its output, the op sequence it issued, in the form
    ``Recording.ops`` has, and (``fast``) the tensors of unknown origin its ops received.

    ``fast``: as a fast trace runs it, without weight arithmetic (the output has the right shapes only) and
    with its value checks (``MadeUpValue``); torch's fused attention paths are off, as in a trace.
    """
    from torch.nn.modules import module as _m

    log_ = _OpLog()
    values = _Values(_trusted_tensors(model, example_inputs)) if fast else None
    h1 = _m.register_module_forward_pre_hook(lambda mod, args: log_.enter(mod))
    h2 = _m.register_module_forward_hook(lambda mod, args, out: log_.leave(mod))
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        if fast:
            torch.backends.mha.set_fastpath_enabled(False)
        with eval_mode(model), torch.no_grad(), \
                (_python_reads_checked(values) if fast else contextlib.nullcontext()), _LogMode(log_, values):
            out = call_model(model, example_inputs)
    finally:
        h1.remove()
        h2.remove()
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return out, log_.ops, (values.unaccounted if fast else [])


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
        from torch.utils._python_dispatch import _get_current_dispatch_mode

        if self.mode is None or _get_current_dispatch_mode() is self.mode:  # the forward's read, not a rule's
            note_python_read(self.rec, f"Tensor.{how}")
        if self.values is not None:
            self.values.python_read(t, how)


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


def _walk_outputs(x, fn, depth=0):
    if depth > 6:
        return
    if isinstance(x, torch.Tensor):
        fn(x)
    elif isinstance(x, dict):
        for v in x.values():
            _walk_outputs(v, fn, depth + 1)
    elif isinstance(x, (list, tuple)):
        for v in x:
            _walk_outputs(v, fn, depth + 1)
    elif dataclasses.is_dataclass(x) and not isinstance(x, type):
        for f in dataclasses.fields(x):
            _walk_outputs(getattr(x, f.name, None), fn, depth + 1)


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (or buffer); CPU for a model with neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def move_to(obj, device):
    """``obj`` (a tensor, or tuples / lists / dicts of them) with every tensor on ``device``; other values kept."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: move_to(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(move_to(v, device) for v in obj)
    return obj


def call_model(model: nn.Module, example_inputs):
    """Run ``model`` on a tensor, a tuple of positional inputs or a dict of keyword inputs."""
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def record(model: nn.Module, example_inputs, *, ignore_modules: dict | None = None,
           rules: dict | None = None, inner_unit: frozenset = frozenset(),
           fast: bool = False) -> tuple[Recording, Any]:
    """Trace one forward of ``model`` in eval mode without gradients; returns the recording and output.

    ``inner_unit``: indices of channel-splitting reshapes whose innermost dim is the unit (see Recording).
    ``fast``: skip the arithmetic of weight-reading convolutions and matrix products (module docstring);
    the output then has the right shapes but not the right values, and ``rec.ops`` must be checked
    against the real forward before the recording is trusted.
    """
    from .rules import RULES

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

    from torch.nn.modules import module as _m

    h1 = _m.register_module_forward_pre_hook(lambda mod, args: pre(mod, args))
    h2 = _m.register_module_forward_hook(lambda mod, args, kwargs, out: post(mod, args, kwargs, out),
                                         with_kwargs=True) if _hook_kwargs_supported() else \
        _m.register_module_forward_hook(lambda mod, args, out: post(mod, args, {}, out))
    # plain nn.MultiheadAttention is traced through its op-by-op twin (same outputs, see surgery.mha) so
    # that heads and embedding become prunable; the class is put back below: tracing changes nothing
    from ..surgery.mha import PrunableMultiheadAttention, supported

    twins = [m for m in model.modules() if supported(m) and nn.MultiheadAttention not in _MODULE_HANDLERS]
    for m in twins:
        m.__class__ = PrunableMultiheadAttention
    # torch's fused encoder-layer kernel hides the attention from the trace: trace the regular path
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with eval_mode(model), torch.no_grad(), \
                _python_reads_checked(_ReadLog(rec, values if fast else None, mode)), mode:
            output = call_model(model, example_inputs)
    except MadeUpValue:
        raise
    except Exception as e:
        raise TraceError(f"could not trace the model with the given example_inputs: {type(e).__name__}: {e}. "
                         f"Check that model(*example_inputs) runs (shapes, device, dtype).", op="forward") from e
    finally:
        h1.remove()
        h2.remove()
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for m in twins:
            m.__class__ = nn.MultiheadAttention
    _walk_outputs(output, lambda t: rec.kill_all(rec.get(t), "reaches the model output"))
    return rec, output


def _hook_kwargs_supported() -> bool:
    import inspect as _inspect

    from torch.nn.modules import module as _m

    return "with_kwargs" in _inspect.signature(_m.register_module_forward_hook).parameters
