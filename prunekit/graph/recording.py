"""The state of one traced forward: channel atoms of every tensor, the constraints between them, side records.

:class:`Recording` is what the per-op rules (:mod:`.rules`) and user handlers (:mod:`.handlers_registry`)
read and write: ``get``/``set`` the labels of a tensor's dims, ``couple``/``unify`` dims that must shrink
together, ``kill`` atoms the engine cannot follow, and note MACs and integer sizes for the cost model and
surgery. :func:`.trace.record` fills one; :func:`.groups.build_graph` turns it into channel groups.
"""
from __future__ import annotations

import dataclasses
import weakref

import numpy as np
import torch
from torch import nn

from ._labels import ANY, ANY_ID, NONE_ID, as_array, is_labelled


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
        self.keep_keys: list | None = None  # the outputs whose shapes are kept (None: all of them)
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
