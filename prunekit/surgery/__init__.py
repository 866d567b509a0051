"""Transactional removal of channels: parameters, gradients, buffers, optimizer state, module attributes.

``remove_channels_(model, graph, removal, optimizer=None)`` slices every coupled tensor of the groups in
``removal`` (``{group id: channel indices}``), updates module attributes (``in_channels``, ``num_heads``,
``hidden_size``...) and checks one forward. Nothing is deep-copied: the old tensors are kept by
reference and put back if any step fails, after which a :class:`~prunekit.errors.PruneError` naming the
FQN and the operation is raised.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math

import numpy as np
import torch
from torch import nn

from ..errors import BrokenForward, PruneError, TraceNotConfirmed
from ..graph.oplog import eval_mode, op_log, this_thread_module_hooks
from ..graph.tensors import _walk_outputs, call_model, output_entries, select_outputs
from ..graph.values import MadeUpValue
from .modules import FIXERS, SIZE_ATTRS, fixers_for, register_fixer
from . import mha

__all__ = ["remove_channels_", "find_breaking_groups", "Transaction", "register_fixer", "FIXERS", "SIZE_ATTRS", "keep_indices",
           "output_shapes", "set_tensor_"]

log = logging.getLogger(__name__)


class Transaction:
    """Undo log of attribute and tensor replacements (references only, no copies)."""

    def __init__(self):
        self._undo: list = []

    def set(self, obj, name: str, value):
        old = getattr(obj, name)
        if isinstance(old, (int, tuple, list)) and not isinstance(old, bool) and old == value:
            return
        self._undo.append(("attr", obj, name, old))
        setattr(obj, name, value)

    def set_data(self, p: torch.Tensor, new: torch.Tensor):
        self._undo.append(("data", p, p.data))
        p.data = new

    def set_grad(self, p: torch.Tensor, new):
        self._undo.append(("grad", p, p.grad))
        p.grad = new

    def set_buffer(self, module: nn.Module, name: str, new: torch.Tensor):
        self._undo.append(("buffer", module, name, module._buffers[name]))
        module._buffers[name] = new

    def set_item(self, d: dict, key, value):
        self._undo.append(("item", d, key, d[key]))
        d[key] = value

    def rollback(self):
        for entry in reversed(self._undo):
            kind = entry[0]
            if kind == "attr":
                object.__setattr__(entry[1], entry[2], entry[3]) if isinstance(entry[1], nn.Module) else \
                    setattr(entry[1], entry[2], entry[3])
            elif kind == "data":
                entry[1].data = entry[2]
            elif kind == "grad":
                entry[1].grad = entry[2]
            elif kind == "buffer":
                entry[1]._buffers[entry[2]] = entry[3]
            elif kind == "item":
                entry[1][entry[2]] = entry[3]
        self._undo.clear()


def keep_indices(size: int, remove) -> torch.Tensor:
    mask = np.ones(size, bool)
    mask[np.asarray(list(remove), dtype=np.int64)] = False
    return torch.from_numpy(np.nonzero(mask)[0])


_SAME_SIZE_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class Scratch:
    """One reusable buffer for the intermediate of a gather along several dims: fresh memory costs a page
    fault per page on first touch, which for a large model's weights takes longer than the copy itself."""

    def __init__(self, nbytes: int = 0):
        self.nbytes = nbytes
        self.buf: torch.Tensor | None = None

    def view(self, shape, dtype: torch.dtype, device) -> torch.Tensor:
        n = math.prod(shape) * dtype.itemsize
        if self.buf is None or self.buf.numel() < n or self.buf.device != torch.device(device):
            self.buf = torch.empty(max(n, self.nbytes), dtype=torch.uint8, device=device)
        return self.buf[:n].view(dtype).view(shape)

    @staticmethod
    def size_for(tensors: dict, cuts: dict) -> int:
        """Bytes of the largest first-step intermediate of ``cuts = {fqn: {dim: positions}}``."""
        best = 0
        for fqn, dims in cuts.items():
            t = tensors.get(fqn)
            if t is None or len(dims) < 2:
                continue
            d = min(dims)
            best = max(best, t.numel() // max(t.shape[d], 1) * (t.shape[d] - len(dims[d])) * t.element_size())
        return best


def take_(t: torch.Tensor, dims: dict, scratch: Scratch | None = None) -> torch.Tensor:
    """``t`` without the positions ``dims = {dim: positions to remove}``, as a new tensor.

    The rows of dim 0 go first (contiguous copies), so later dims gather from less data. Rows of a floating
    tensor are gathered through a same-size integer view of their bits (exact: only bits move), which CPU
    gathers along dim 0 handle faster; along later dims float32's own kernel is the faster one
    (``benchmarks/engine_speed.py`` measures the whole call). With ``scratch``, the intermediate of a gather
    along several dims lives in that reused buffer; the result is always new memory.
    """
    out = t.detach()
    raw_dtype = _SAME_SIZE_INT.get(out.element_size()) if out.is_floating_point() and not out.is_complex() \
        and out.dim() else None
    order = sorted(dims)
    for i, d in enumerate(order):
        keep = keep_indices(t.shape[d], dims[d]).to(t.device)
        src, dtype = out, out.dtype
        if raw_dtype is not None and (d == 0 or out.element_size() != 4):
            src, dtype = out.view(raw_dtype), raw_dtype
        if scratch is not None and i == 0 and len(order) > 1:
            shape = list(src.shape)
            shape[d] = len(keep)
            res = torch.index_select(src, d, keep, out=scratch.view(shape, dtype, t.device))
        else:
            res = src.index_select(d, keep)
        out = res.view(t.dtype) if dtype != t.dtype else res
    return out


def _owner(model: nn.Module, fqn: str, modules: dict | None = None):
    mod_name, _, attr = fqn.rpartition(".")
    if modules is not None and mod_name in modules:
        return modules[mod_name], attr
    return (model.get_submodule(mod_name) if mod_name else model), attr


def set_tensor_(model: nn.Module, fqn: str, new: torch.Tensor, tx: Transaction, modules: dict | None = None):
    """Replace parameter or buffer ``fqn`` by ``new`` (a parameter keeps its identity; its grad follows).
    ``modules``: ``dict(model.named_modules())``, when the caller has it (saves a path walk per tensor)."""
    mod, attr = _owner(model, fqn, modules)
    if attr in mod._parameters and mod._parameters[attr] is not None:
        tx.set_data(mod._parameters[attr], new)
    elif attr in mod._buffers:
        tx.set_buffer(mod, attr, new)
    else:
        raise PruneError("not a parameter or buffer", fqn=fqn, op="resize")


def output_shapes(output) -> list:
    shapes = []
    _walk_outputs(output, lambda t: shapes.append(tuple(t.shape)))
    return shapes


@dataclasses.dataclass
class _Ctx:
    tx: Transaction
    new_in_shapes: dict

    def set(self, obj, name, value):
        self.tx.set(obj, name, value)

    def in_shape(self, module):
        return self.new_in_shapes.get(id(module))


def plan_tensor_cuts(graph, removal: dict) -> dict:
    """``{fqn: {dim: sorted positions to remove}}`` for a ``{group id: channels}`` removal."""
    cuts: dict[str, dict[int, set]] = {}
    for gid, chans in removal.items():
        if not len(chans):
            continue
        for m in graph.groups[gid].members:
            pos = m.positions(chans)
            if len(pos):
                cuts.setdefault(m.fqn, {}).setdefault(m.dim, set()).update(pos.tolist())
    return {f: {d: sorted(p) for d, p in dims.items()} for f, dims in cuts.items()}


def remove_channels_(model: nn.Module, graph, removal: dict, *, optimizer=None, example_inputs=None,
                     validate: bool = True, dry_run: bool = False, check_ops: bool = True,
                     cuts: dict | None = None) -> dict:
    """Physically remove ``removal = {group id: channel indices}`` from ``model`` in place.

    Returns ``{fqn: new shape}`` of every tensor that changed. On any failure the model and the
    optimizer are restored exactly and ``PruneError(fqn=..., op=...)`` is raised.
    """
    tx = Transaction()
    if cuts is None:  # a plan already lists them: ``{fqn: {dim: sorted positions}}``, as plan_tensor_cuts
        cuts = plan_tensor_cuts(graph, removal)
    removed = graph.removed_flat(removal)
    fqn, op, validating = None, None, False
    try:
        opt_state = {}
        if optimizer is not None:
            opt_state = {id(p): s for p, s in optimizer.state.items()}
        touched_modules = {}
        new_shapes = {}
        name_to_mod = dict(model.named_modules())
        scratch = Scratch(Scratch.size_for(graph.rec.tensors, cuts))
        for fqn, dims in cuts.items():
            op = "slice"
            t = graph.rec.tensors[fqn]
            old_shape = tuple(t.shape)
            new = take_(t, dims, scratch)
            grad = t.grad if isinstance(t, nn.Parameter) else None
            if grad is not None:
                tx.set_grad(t, None)  # so that rollback restores data before the old-shaped grad
            set_tensor_(model, fqn, new.contiguous(), tx, name_to_mod)
            new_shapes[fqn] = tuple(new.shape)
            if grad is not None and tuple(grad.shape) == old_shape:
                op = "slice grad"
                g = take_(grad, dims, scratch)
                tx.set_grad(t, g.contiguous())
            state = opt_state.get(id(t))
            if state:
                op = "slice optimizer state"
                for k, v in list(state.items()):
                    if isinstance(v, torch.Tensor) and tuple(v.shape) == old_shape and v.dim() > 0:
                        s = take_(v, dims, scratch)
                        tx.set_item(state, k, s.contiguous())
            mod, _ = _owner(model, fqn, name_to_mod)
            touched_modules[id(mod)] = mod
        # modules whose input width changed (norms without weights, depthwise convs)
        new_in = {}
        for mfqn, call in graph.rec.module_calls.items():
            mod = name_to_mod.get(mfqn)
            if mod is None:
                continue
            shape = []
            changed = False
            for n, lab in zip(call.shape, call.labels):
                k = n
                if lab is not None and not isinstance(lab, str):
                    idx = graph._flat_index(lab)
                    k = n - int(removed[idx].sum()) if len(idx) else n
                changed |= k != n
                shape.append(k)
            new_in[id(mod)] = tuple(shape)
            if changed:
                touched_modules[id(mod)] = mod
        ctx = _Ctx(tx, new_in)
        op = "convert nn.MultiheadAttention"
        for mfqn, mod in name_to_mod.items():  # a changed plain MHA computes op by op from now on
            if mha.supported(mod) and any(f.startswith(mfqn + ".") for f in cuts):
                fqn = mfqn
                mha.mark_pruned_(mod, tx.set)
                touched_modules[id(mod)] = mod
        for mod in touched_modules.values():
            for fix in fixers_for(mod):
                fqn, op = graph.rec.module_fqn.get(id(mod)), f"fix attributes of {type(mod).__name__}"
                fix(mod, ctx)
        op = "update size attributes"
        _update_size_attrs(graph, removed, name_to_mod, tx)
        if validate and example_inputs is not None:
            fqn, op = None, "validation forward"
            validating = True
            _validate(model, graph, example_inputs, check_ops)
        if dry_run:
            tx.rollback()
        return new_shapes
    except PruneError as e:
        tx.rollback()
        raise e
    except Exception as e:
        tx.rollback()
        kind = BrokenForward if validating else PruneError  # the forward of the pruned model raised
        raise kind(f"pruning failed and the model was restored: {type(e).__name__}: {e}", fqn=fqn, op=op) from e


@contextlib.contextmanager
def _module_stack(model: nn.Module):
    """Yield a list that holds, while a forward runs, the FQNs of the modules being called (outermost first);
    after a forward that raised it still names the module that raised and its callers."""
    names = {id(m): n for n, m in model.named_modules()}
    stack: list = []

    def pre(mod, args):
        n = names.get(id(mod))
        if n is not None:
            stack.append(n)

    def post(mod, args, out):
        n = names.get(id(mod))
        if n is not None and stack and stack[-1] == n:
            stack.pop()

    with this_thread_module_hooks(pre, post):
        yield stack


def passthrough_modules(graph) -> set:
    """Modules whose (first call's) output has the shape of their first input under *any* removal: same
    shape, and every dim holds the same prunable channels (as a multiset) on both sides -- residual blocks,
    attention blocks, norms. If such a module raises, its input is a stand-in of the right shape."""
    out = set()
    for fqn, call in graph.rec.module_calls.items():
        if not fqn or call.out_shape is None or tuple(call.out_shape) != tuple(call.shape):
            continue
        ok = True
        for a, b in zip(call.labels, call.out_labels):
            if isinstance(a, str) or isinstance(b, str):
                ok = False
                break
            fa = np.sort(graph._flat_index(a)) if a is not None else np.zeros(0, np.int64)
            fb = np.sort(graph._flat_index(b)) if b is not None else np.zeros(0, np.int64)
            if not np.array_equal(fa, fb):
                ok = False
                break
        if ok:
            out.add(fqn)
    return out


@contextlib.contextmanager
def _stand_in_on_error(model: nn.Module, fqns: set, stack: list, caught: list):
    """While active, a module of ``fqns`` whose forward raises records ``(error, module stack)`` in ``caught``
    and returns its first tensor input instead, so one forward finds every module that breaks."""
    patched = []
    for fqn, mod in model.named_modules():
        if fqn not in fqns or "forward" in mod.__dict__:
            continue
        orig = mod.forward

        def forward(*args, _orig=orig, **kwargs):
            depth = len(stack)  # this module's own entry is already on the stack
            try:
                return _orig(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - recorded; the search blames the module's groups
                x = next((a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)), None)
                if x is None:
                    raise
                caught.append((f"{type(e).__name__}: {e}", list(stack)))
                del stack[depth:]  # the modules that raised inside never reached their post-hooks
                return x

        mod.forward = forward
        patched.append(mod)
    try:
        yield
    finally:
        for mod in patched:
            mod.__dict__.pop("forward", None)


def find_breaking_groups(model: nn.Module, graph, removal: dict, example_inputs) -> dict:
    """Groups whose removal makes the validation forward fail: ``{group id: error}``.

    Model code sometimes sizes a reshape from a width the trace cannot see (``C // self.num_heads`` with
    ``C`` the input width); such groups are found by trying them (each try is rolled back). A failed try
    names the module that raised; the groups with members in that module are set aside and the rest is
    tried again, until a try passes. A group set aside alone is breaking; when several were set aside
    together, each is tried on top of the passing set and is breaking when that try fails. A forward that
    fails outside any module falls back to halving. The cost is about one (partial) forward per breaking
    module plus one per group set aside with others, instead of two per breaking group and halving level.
    A group blamed alone may be innocent (the real cause had no member there); it is then left whole
    needlessly, never pruned wrongly: the final prune validates again.

    In the tries that set groups aside, a module that passes its input's shape through under any removal
    (:func:`passthrough_modules`: transformer and residual blocks, attention) and raises hands its input on
    instead, so one forward names every breaking module, not only the first: a model with a width-sized
    reshape in each of its N blocks costs two forwards instead of N.
    """
    bad: dict = {}
    members = {gid: {m.fqn for m in graph.groups[gid].members} for gid in removal}
    through = passthrough_modules(graph)

    def trial(ids, caught=None):
        with _module_stack(model) as stack:
            ctx = _stand_in_on_error(model, through, stack, caught) if caught is not None else \
                contextlib.nullcontext()
            try:
                with ctx:
                    # a try asks whether the forward runs; a fast trace is checked by the final prune
                    remove_channels_(model, graph, {i: removal[i] for i in ids}, example_inputs=example_inputs,
                                     dry_run=True, check_ops=False)
                return None, []
            except PruneError as e:
                return str(e), list(stack)

    def touching(ids, stack):
        for mfqn in reversed(stack):  # the innermost module first, then its callers
            prefix = mfqn + "." if mfqn else ""
            hit = [i for i in ids if any(f.startswith(prefix) for f in members[i])]
            if hit:
                return hit
        return []

    def halving(ids):
        if not ids:
            return
        err, _ = trial(ids)
        if err is None:
            return
        if len(ids) == 1:
            bad[ids[0]] = err
            return
        half = len(ids) // 2
        halving(ids[:half])
        halving(ids[half:])

    good, suspects = sorted(removal), []
    while good:
        caught: list = []
        err, stack = trial(good, caught)
        if err is None and not caught:
            break
        progress, start, aside = False, list(good), set()
        for n, (e, st) in enumerate(caught + ([(err, stack)] if err is not None else [])):
            hit = touching(start, st)
            if n and (not hit or aside & set(hit)):
                continue  # a later failure that a group set aside for an earlier one explains (or nothing does)
            hit = [i for i in hit if i in good]
            if not hit:
                continue
            aside |= set(hit)
            if len(hit) == 1:  # the only group left with members where the forward broke: blamed directly
                bad[hit[0]] = e
            else:
                suspects += hit
            good = [i for i in good if i not in hit]
            progress = True
        if not progress:  # no module to blame: search the remaining groups by halving
            halving(good)
            good = [i for i in good if i not in bad]
            break
    for i in suspects:
        err, _ = trial(good + [i])
        if err is None:
            good.append(i)
        else:
            bad[i] = err
    return bad


def _update_size_attrs(graph, removed, name_to_mod, tx):
    """Integer attributes that sized a view/split (``self.num_heads``, ``self.split_size``) follow the new width.

    Only the module that issued the op is considered, never one with a fixer (its sizes come from its
    weights), and two different new values for one attribute are refused rather than guessed.
    """
    proposals: dict = {}
    for use in graph.rec.size_uses:
        if len(use.labels) != use.size or not use.modules:
            continue
        idx = graph._flat_index(use.labels)
        n_removed = int(removed[idx].sum()) if len(idx) else 0
        mod = name_to_mod.get(use.modules[0])
        if mod is None or fixers_for(mod):
            continue
        for attr in SIZE_ATTRS:
            v = mod.__dict__.get(attr)
            if isinstance(v, int) and not isinstance(v, bool) and v == use.size:
                proposals.setdefault((id(mod), attr), (mod, use.modules[0], set()))[2].add(use.size - n_removed)
    for (_, attr), (mod, mfqn, values) in proposals.items():
        if len(values) > 1:
            # the attribute sized several dims that now get different widths: it is left as it is, and the
            # validation forward decides (a group whose change breaks the forward is then kept whole)
            log.debug("%s.%s=%s sizes dims that would get widths %s; left unchanged", mfqn, attr,
                      getattr(mod, attr), sorted(values))
            continue
        new = next(iter(values))
        if new != getattr(mod, attr):
            tx.set(mod, attr, new)


def _validate(model, graph, example_inputs, check_ops: bool = True):
    """Run the pruned model on ``example_inputs`` and compare its output shapes with the traced ones.

    After a fast trace (``check_ops``) the forward must also issue the trace's op sequence. It runs as the
    trace did, without weight arithmetic and with the same value checks, unless some tensor of that trace
    or of this forward had an origin the checks could not follow; then it runs with real values. Sets
    ``graph.rec.validated`` to ``"fast"`` or ``"real"``.
    """
    if graph.rec.fast and check_ops:  # a graph from a trace without weight arithmetic: the forward must agree
        ops = None
        if not graph.rec.unaccounted:
            try:
                out, ops, unaccounted = op_log(model, example_inputs, fast=True)
            except MadeUpValue as e:
                raise TraceNotConfirmed(f"the pruned model's forward reads values the fast trace did not compute "
                                        f"({e}); trace with real values", op="trace check") from e
            graph.rec.validated = "fast"
            if unaccounted:
                log.debug("confirming the fast trace with real values: %s", unaccounted[0])
                ops = None
        else:
            log.debug("confirming the fast trace with real values: %s", graph.rec.unaccounted[0])
        if ops is None:
            out, ops, _ = op_log(model, example_inputs)
            graph.rec.validated = "real"
        if ops != graph.rec.ops:
            at = next((i for i, (a, b) in enumerate(zip(ops, graph.rec.ops)) if a != b), min(len(ops),
                                                                                              len(graph.rec.ops)))
            raise TraceNotConfirmed(f"the pruned model's forward issued other ops than the fast trace (first "
                                    f"difference at op {at} of {len(ops)}); trace with real values", op="trace check")
    else:
        with eval_mode(model), torch.no_grad():
            out = call_model(model, example_inputs)
        graph.rec.validated = "real"
    # dim 0 is the batch (or, for detectors, the data-dependent number of boxes): compare the rest
    keys = graph.rec.keep_keys
    before = [s[1:] + (len(s),) for s in output_shapes(select_outputs(graph.output, keys))]
    after = [s[1:] + (len(s),) for s in output_shapes(select_outputs(out, keys))]
    if before != after:
        raise BrokenForward(f"output shapes changed from {before} to {after}", op="validation forward")
    graph.outputs_changed = changed_outputs(graph.output, out) if keys is not None else []


def changed_outputs(before, after) -> list:
    """``[{"output", "before", "after"}]``: the top-level outputs whose shapes (past the batch dim) differ."""
    old, new = dict(output_entries(before)), dict(output_entries(after))
    res = []
    for k, v in old.items():
        a, b = output_shapes(v), output_shapes(new.get(k))
        if [s[1:] for s in a] != [s[1:] for s in b]:
            res.append({"output": k, "before": a[0] if len(a) == 1 else a, "after": b[0] if len(b) == 1 else b})
    return res

from .factorize import Factorized, replace as replace_factorized  # noqa: E402  (the factorised-layer block)
