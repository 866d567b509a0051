"""Per-op rules: how channel atoms in the inputs of an aten op map to its outputs.

Each rule is ``rule(rec, args, kwargs, out)``: it reads input labels with ``rec.get``, couples dims that
must shrink together (``rec.couple``/``rec.unify``), kills atoms the op uses in a way the engine cannot
follow (``rec.kill``) and sets the output labels (``rec.set``). An op without a rule kills every atom it
touches (see ``trace._apply_rule``): the engine never guesses.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import ConfigError
from ._labels import ANY, ANY_ID, NONE_ID, as_array, is_labelled

RULES: dict = {}


def rule(*names):
    def deco(fn):
        taken = [n for n in names if n in RULES]  # check every name first: a refusal registers nothing
        if taken:
            raise ConfigError(f"rule for op {taken[0]!r} is already registered (by {RULES[taken[0]].__name__}); "
                              f"one rule per op")
        for n in names:
            RULES[n] = fn
        return fn

    return deco


def _n(dim, nd):
    return dim + nd if dim < 0 else dim


def _first_tensor_out(out):
    return out[0] if isinstance(out, (tuple, list)) else out


# ---- elementwise ------------------------------------------------------------------------------
def broadcast_couple(rec, tensors, shape):
    """Labels of the broadcast result of ``tensors`` (shape ``shape``), coupling equal dims."""
    nd = len(shape)
    res = [ANY] * nd
    have = [False] * nd
    for t in tensors:
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            continue
        labs = rec.get(t)
        off = nd - t.dim()
        for i, lab in enumerate(labs):
            d = off + i
            if t.shape[i] == 1 and shape[d] != 1:
                continue  # broadcast along d: uniform
            if not have[d]:
                res[d] = lab
                have[d] = True
            else:
                res[d] = rec.couple(res[d], lab, shape[d])
    return res


@rule("__pointwise__", "clone", "_to_copy", "detach", "alias", "lift_fresh", "contiguous", "hardswish",
      "hardswish_", "hardsigmoid", "hardsigmoid_", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "elu",
      "elu_", "mish", "mish_", "softplus", "relu6", "silu_", "gelu_", "celu", "selu",
      "masked_fill", "masked_fill_", "where", "clamp", "clamp_", "nan_to_num", "_conj", "positive",
      "lift_fresh_copy", "copy", "threshold", "logit", "dropout", "bernoulli", "fill", "zero", "type_as")
def _pointwise(rec, args, kwargs, out):
    tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
    outs = [o for o in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(o, torch.Tensor)]
    if not outs:
        return
    shape = tuple(outs[0].shape)
    res = broadcast_couple(rec, tensors, shape)
    for o in outs:
        if tuple(o.shape) == shape:
            rec.set(o, res)


@rule("fill_", "zero_", "uniform_", "normal_", "bernoulli_", "random_", "exponential_")
def _keep_inplace(rec, args, kwargs, out):
    pass


@rule("copy_")
def _copy_(rec, args, kwargs, out):
    dst, src = args[0], args[1]
    res = broadcast_couple(rec, [dst, src], tuple(dst.shape))
    rec.set(dst, res)


@rule("native_dropout")
def _native_dropout(rec, args, kwargs, out):
    labs = rec.get(args[0])
    for o in out:
        rec.set(o, labs)


# ---- views and shape ops ------------------------------------------------------------------------
def _view_groups(a, b):
    """Match dims of shape ``a`` to dims of shape ``b`` with equal products: list of (in dims, out dims)."""
    ai = [i for i, s in enumerate(a) if s != 1]
    bi = [j for j, s in enumerate(b) if s != 1]
    groups = []
    i = j = 0
    while i < len(ai) and j < len(bi):
        gi, gj = [ai[i]], [bi[j]]
        pa, pb = a[ai[i]], b[bi[j]]
        i += 1
        j += 1
        while pa != pb:
            if pa < pb:
                if i >= len(ai):
                    return None
                pa *= a[ai[i]]
                gi.append(ai[i])
                i += 1
            else:
                if j >= len(bi):
                    return None
                pb *= b[bi[j]]
                gj.append(bi[j])
                j += 1
        groups.append((gi, gj))
    if i != len(ai) or j != len(bi):
        return None
    return groups


def view_labels(rec, labs, a, b):
    """Labels after reshaping a tensor of shape ``a`` with labels ``labs`` to shape ``b``."""
    res = [None] * len(b)
    if not any(is_labelled(x) or x == ANY for x in labs):
        return res
    for i, s in enumerate(a):
        if s == 1 and is_labelled(labs[i]):
            pass  # a size-1 labelled dim disappears or stays size 1: nothing to remove there
    groups = _view_groups(list(a), list(b))
    if groups is None:
        rec.kill_all(labs, "reshape the engine cannot map")
        return res
    for gi, gj in groups:
        labelled = [d for d in gi if is_labelled(labs[d])]
        if not labelled:
            if len(gi) == 1 and len(gj) == 1:
                res[gj[0]] = labs[gi[0]]
            elif all(labs[d] == ANY for d in gi):
                for d in gj:
                    res[d] = ANY
            continue
        if len(gi) == 1 and len(gj) == 1:
            res[gj[0]] = labs[gi[0]]
            rec.size_use(b[gj[0]], labs[gi[0]])
            continue
        if len(labelled) > 1:
            rec.kill_all([labs[d] for d in gi], "reshape merges two channel dims")
            continue
        # flat label over the group's positions (C-order), repeating the single labelled dim's atoms
        sizes = [a[d] for d in gi]
        k = gi.index(labelled[0])
        shp = [1] * len(gi)
        shp[k] = sizes[k]
        arr = np.broadcast_to(labs[labelled[0]].reshape(shp), sizes).reshape(-1)
        osizes = [b[d] for d in gj]
        m = arr.reshape(osizes)
        placed = None
        for t, d in enumerate(gj):
            if osizes[t] == 1:
                continue
            idx = [0] * len(gj)
            idx[t] = slice(None)
            shp1 = [1] * len(gj)
            shp1[t] = osizes[t]
            if len(gj) == 1 or np.array_equal(np.broadcast_to(m[tuple(idx)].reshape(shp1), m.shape), m):
                # atoms depend only on this output dim
                placed = (t, d)
                break
        if placed is not None:
            t, d = placed
            idx = [0] * len(gj)
            idx[t] = slice(None)
            lab = m[tuple(idx)].copy()
            res[d] = lab
            rec.size_use(b[d], lab)
            continue
        # atoms vary along several output dims (e.g. [T, H*D] -> [T, H, D]): the outermost dim becomes
        # the unit and each of its blocks is unified into one channel (whole heads go)
        # ([3, H, D] for fused qkv): the innermost dim before the last one is taken, so q/k/v of one head
        # and all its head_dim positions form one channel
        cand = [t for t in range(len(gj) - 1) if osizes[t] > 1] or [len(gj) - 1]
        t = cand[-1]
        if rec.op_count in rec.inner_unit:  # the other reading: the innermost dim is the unit
            t = max(u for u in range(len(gj)) if osizes[u] > 1)
        d = gj[t]
        lab = rec.unify_rows(np.moveaxis(m, t, 0).reshape(osizes[t], -1).reshape(-1), osizes[t])
        rec.split_units.append((rec.op_count, lab))
        res[d] = lab
        rec.size_use(b[d], lab)
    return res


@rule("view", "_unsafe_view", "reshape", "_reshape_alias", "view_copy", "unflatten", "flatten")
def _view(rec, args, kwargs, out):
    x = args[0]
    res = view_labels(rec, rec.get(x), tuple(x.shape), tuple(out.shape))
    rec.set(out, res, rec.is_param_view(x))


@rule("expand", "expand_copy")
def _expand(rec, args, kwargs, out):
    x = args[0]
    labs = rec.get(x)
    nd = out.dim()
    off = nd - x.dim()
    res = [ANY] * nd
    for i, lab in enumerate(labs):
        if x.shape[i] == 1 and out.shape[off + i] != 1:
            res[off + i] = ANY
        else:
            res[off + i] = lab
    rec.set(out, res, rec.is_param_view(x))


@rule("permute", "permute_copy")
def _permute(rec, args, kwargs, out):
    x = args[0]
    labs = rec.get(x)
    dims = [_n(d, x.dim()) for d in args[1]]
    rec.set(out, [labs[d] for d in dims], rec.is_param_view(x))


@rule("transpose", "transpose_copy", "swapaxes", "swapdims", "transpose_", "swapaxes_", "swapdims_")
def _transpose(rec, args, kwargs, out):
    x = args[0]
    labs = list(rec.get(x))
    if x.dim() >= 2:
        a, b = _n(args[1], x.dim()), _n(args[2], x.dim())
        labs[a], labs[b] = labs[b], labs[a]
    rec.set(out, labs, rec.is_param_view(x))


@rule("t", "numpy_T", "t_")
def _t(rec, args, kwargs, out):
    x = args[0]
    labs = list(rec.get(x))
    rec.set(out, labs[::-1], rec.is_param_view(x))


@rule("unsqueeze", "unsqueeze_copy", "unsqueeze_")
def _unsqueeze(rec, args, kwargs, out):
    x = args[0]
    labs = list(rec.get(x))
    d = _n(args[1], out.dim())
    labs.insert(d, None)
    rec.set(out, labs, rec.is_param_view(x))


@rule("squeeze", "squeeze_copy", "squeeze_")
def _squeeze(rec, args, kwargs, out):
    x = args[0]
    labs = rec.get(x)
    if len(args) > 1:
        dims = args[1] if isinstance(args[1], (list, tuple)) else [args[1]]
        dims = {_n(d, x.dim()) for d in dims}
    else:
        dims = set(range(x.dim()))
    res = [lab for i, lab in enumerate(labs) if not (i in dims and x.shape[i] == 1)]
    rec.set(out, res, rec.is_param_view(x))


@rule("select", "select_copy")
def _select(rec, args, kwargs, out):
    x = args[0]
    labs = list(rec.get(x))
    d = _n(args[1], x.dim())
    rec.kill(labs[d], "select of one position of a channel dim")
    del labs[d]
    rec.set(out, labs, rec.is_param_view(x))


@rule("slice", "slice_copy")
def _slice(rec, args, kwargs, out):
    x = args[0]
    labs = list(rec.get(x))
    d = _n(args[1] if len(args) > 1 else 0, x.dim())
    if out.shape[d] != x.shape[d] and labs[d] is not None:
        if is_labelled(labs[d]):
            rec.kill(labs[d], "slice of a channel dim with fixed bounds")
            start = args[2] if len(args) > 2 and args[2] is not None else 0
            step = args[4] if len(args) > 4 else 1
            start = start + x.shape[d] if start < 0 else min(start, x.shape[d])
            labs[d] = labs[d][start::step][: out.shape[d]]
    rec.set(out, labs, rec.is_param_view(x))


@rule("narrow")
def _narrow(rec, args, kwargs, out):
    x = args[0]
    labs = list(rec.get(x))
    d = _n(args[1], x.dim())
    if out.shape[d] != x.shape[d] and is_labelled(labs[d]):
        rec.kill(labs[d], "narrow of a channel dim")
        labs[d] = labs[d][args[2]: args[2] + out.shape[d]]
    rec.set(out, labs)


def _split_like(rec, x, d, outs, kind):
    labs = list(rec.get(x))
    lab = labs[d]
    sizes = [o.shape[d] for o in outs]
    if is_labelled(lab):
        if len(set(sizes)) == 1 and len(sizes) > 1:
            # equal pieces (chunk, qkv split): the same relative channel goes from every piece
            res = rec.unify_cols(lab, len(sizes))
            rec.size_use(sizes[0], res)
            pieces = [res] * len(sizes)
        elif len(sizes) == 1:
            pieces = [lab]
        else:
            rec.kill(lab, f"{kind} into unequal pieces of a channel dim")
            pieces = np.split(lab, np.cumsum(sizes)[:-1])
    else:
        pieces = [lab] * len(sizes)
    for o, p in zip(outs, pieces):
        li = list(labs)
        li[d] = p
        rec.set(o, li, rec.is_param_view(x))


@rule("split", "unsafe_split", "split_with_sizes", "unsafe_split_with_sizes", "chunk", "tensor_split")
def _split(rec, args, kwargs, out):
    x = args[0]
    d = args[2] if len(args) > 2 else kwargs.get("dim", 0)
    _split_like(rec, x, _n(d, x.dim()), list(out), "split")


@rule("unbind", "unbind_copy")
def _unbind(rec, args, kwargs, out):
    x = args[0]
    labs = list(rec.get(x))
    d = _n(args[1] if len(args) > 1 else 0, x.dim())
    rec.kill(labs[d], "unbind of a channel dim")
    rest = labs[:d] + labs[d + 1:]
    for o in out:
        rec.set(o, rest, rec.is_param_view(x))


@rule("cat", "concat", "concatenate")
def _cat(rec, args, kwargs, out):
    tensors = [t for t in args[0] if not (t.dim() == 1 and t.shape[0] == 0)]
    d = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    d = _n(d, out.dim())
    nd = out.dim()
    res = [None] * nd
    for k in range(nd):
        if k == d:
            parts = [as_array(rec.get(t)[d], t.shape[d]) for t in tensors]
            arr = np.concatenate(parts) if parts else None
            if arr is not None and (arr >= 0).any():
                res[k] = arr
            elif arr is not None and (arr == ANY_ID).all():
                res[k] = ANY
            else:
                res[k] = None
        else:
            cur, first = None, True
            for t in tensors:
                lab = rec.get(t)[k]
                cur = lab if first else rec.couple(cur, lab, out.shape[k])
                first = False
            res[k] = cur
    rec.set(out, res)


@rule("stack")
def _stack(rec, args, kwargs, out):
    tensors = list(args[0])
    d = _n(args[1] if len(args) > 1 else kwargs.get("dim", 0), out.dim())
    base = broadcast_couple(rec, tensors, tuple(tensors[0].shape))
    res = list(base)
    res.insert(d, None)
    rec.set(out, res)


@rule("repeat")
def _repeat(rec, args, kwargs, out):
    x = args[0]
    reps = list(args[1])
    labs = rec.get(x)
    off = len(reps) - x.dim()
    res = [ANY] * len(reps)
    for i, lab in enumerate(labs):
        r = reps[off + i]
        if is_labelled(lab):
            res[off + i] = np.tile(lab, r)
        else:
            res[off + i] = lab if r == 1 or lab is None else ANY
    rec.set(out, res)


@rule("flip")
def _flip(rec, args, kwargs, out):
    x = args[0]
    labs = list(rec.get(x))
    for d in args[1]:
        d = _n(d, x.dim())
        if is_labelled(labs[d]):
            labs[d] = labs[d][::-1].copy()
    rec.set(out, labs)


def _kill_dims_rule(name_dims):
    def fn(rec, args, kwargs, out):
        x = args[0]
        labs = list(rec.get(x))
        dims = name_dims(args, x)
        for d in dims:
            rec.kill(labs[d], f"op moves positions along a channel dim")
            labs[d] = None
        for o in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(o, torch.Tensor) and o.dim() == x.dim():
                rec.set(o, labs)
    return fn


def _dims_arg(i, default=None):
    def f(args, x):
        v = args[i] if len(args) > i else default
        if v is None:
            return list(range(x.dim()))
        v = v if isinstance(v, (list, tuple)) else [v]
        return [_n(d, x.dim()) for d in v]
    return f


RULES["roll"] = _kill_dims_rule(_dims_arg(2))
RULES["cumsum"] = _kill_dims_rule(_dims_arg(1))
RULES["cumprod"] = _kill_dims_rule(_dims_arg(1))
RULES["sort"] = _kill_dims_rule(_dims_arg(1, -1))
RULES["tril"] = _kill_dims_rule(lambda a, x: [x.dim() - 2, x.dim() - 1])
RULES["triu"] = _kill_dims_rule(lambda a, x: [x.dim() - 2, x.dim() - 1])


@rule("topk")
def _topk(rec, args, kwargs, out):
    x = args[0]
    labs = list(rec.get(x))
    d = _n(args[2] if len(args) > 2 else -1, x.dim())
    rec.kill(labs[d], "topk along a channel dim")
    labs[d] = None
    for o in out:
        rec.set(o, labs)


@rule("index_select", "gather", "take_along_dim", "index", "_unsafe_index", "index_put", "index_put_",
      "scatter", "scatter_", "scatter_add", "scatter_add_", "index_add", "index_copy", "masked_scatter",
      "masked_select", "nonzero", "embedding_bag", "_embedding_bag", "unfold", "im2col", "col2im", "as_strided",
      "diagonal", "diag", "diag_embed")
def _indexing(rec, args, kwargs, out):
    """Data-dependent positions: labelled dims of the indexed tensor are killed; other dims are kept
    only where the op provably keeps them in place (index with a leading ``None`` block)."""
    x = args[0]
    labs = list(rec.get(x))
    name = "indexing"
    outs = [o for o in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(o, torch.Tensor)]
    res_trailing = None
    if isinstance(args[1] if len(args) > 1 else None, (list, tuple)) and outs:
        idx = list(args[1])
        k = len(idx)
        used = [i for i, v in enumerate(idx) if v is not None]
        for i in used:
            rec.kill(labs[i], f"{name} along a channel dim")
        lead = [i for i in range(min(used) if used else k)]
        trail = list(range(k, x.dim()))
        o = outs[0]
        res = [None] * o.dim()
        if used == list(range(min(used), max(used) + 1)):
            for i in lead:
                res[i] = labs[i]
        for j, i in enumerate(trail):
            res[o.dim() - len(trail) + j] = labs[i]
        for t in _idx_tensors(idx):
            rec.kill_all(rec.get(t), "used as an index")
        values = args[2] if len(args) > 2 else None
        if str(getattr(rec, "_cur", "")).startswith("index_put") and isinstance(values, torch.Tensor):
            # x[idx] = values: x's trailing dims receive values' trailing dims (broadcast from the right); the
            # dims values spreads over the indexed positions lose their identity
            lv = list(rec.get(values))
            n_tr = len(trail)
            for j in range(n_tr):
                od, vd = o.dim() - n_tr + j, values.dim() - n_tr + j
                if vd >= 0 and values.shape[vd] == o.shape[od]:
                    res[od] = rec.couple(res[od], lv[vd], o.shape[od])
            for vd in range(max(values.dim() - n_tr, 0)):
                rec.kill(lv[vd], "index_put values spread over indexed positions")
        rec.set(o, res)
        for o2 in outs[1:]:
            rec.set(o2, [None] * o2.dim())
        return
    for t in [a for a in args if isinstance(a, torch.Tensor)]:
        rec.kill_all(rec.get(t), f"{name} op touches this channel dim")
    for o in outs:
        rec.set(o, [None] * o.dim())


@rule("as_strided_")
def _restride(rec, args, kwargs, out):
    """In place ``as_strided_`` that keeps the size, the offset and the stride of every dim longer than one
    only changes how size-1 dims are laid out (a keepdim reduction restores its input's memory format this
    way): every element stays where it was, so the labels do too. Any other use moves elements: indexing."""
    x = args[0]
    size = tuple(args[1]) if len(args) > 1 else ()
    before, offset = rec.strides_before
    same = (size == tuple(x.shape) and len(before) == x.dim() and offset == x.storage_offset()
            and all(n == 1 or a == b for n, a, b in zip(x.shape, before, x.stride())))
    if same:
        rec.set(out, rec.get(x))
        return
    rec._cur = "as_strided"
    _indexing(rec, args, kwargs, out)


def _idx_tensors(idx):
    return [t for t in idx if isinstance(t, torch.Tensor)]


# ---- reductions -----------------------------------------------------------------------------------
_EXACT_REDUCE = {"sum", "nansum"}


def _reduce(kind, dim_pos=1, keep_pos=2):
    def fn(rec, args, kwargs, out):
        x = args[0]
        labs = list(rec.get(x))
        nd = x.dim()
        dims = args[dim_pos] if len(args) > dim_pos else kwargs.get("dim")
        if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
            dims = list(range(nd))
        dims = dims if isinstance(dims, (list, tuple)) else [dims]
        dims = {_n(d, nd) for d in dims} if nd else set()
        keep = args[keep_pos] if len(args) > keep_pos and isinstance(args[keep_pos], bool) else \
            kwargs.get("keepdim", False)
        for d in dims:
            if is_labelled(labs[d]) and x.shape[d] > 1:
                if kind in _EXACT_REDUCE:
                    pass
                elif kind in ("argmax", "argmin", "max", "min", "mode", "median"):
                    rec.mark_approx(labs[d], f"{kind} over a channel dim")
                else:
                    rec.mark_approx(labs[d], f"{kind} over a channel dim changes when channels go")
        res = [None if i in dims else lab for i, lab in enumerate(labs)] if keep else \
            [lab for i, lab in enumerate(labs) if i not in dims]
        for o in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(o, torch.Tensor) and o.dim() == len(res):
                rec.set(o, res)
    return fn


for _k in ("sum", "nansum", "mean", "amax", "amin", "prod", "logsumexp", "any", "all", "argmax", "argmin",
           "max", "min", "nanmean", "median", "mode"):
    RULES[_k] = _reduce(_k)
for _k in ("var", "std", "var_mean", "std_mean"):
    RULES[_k] = _reduce(_k, 1, 3)
RULES["linalg_vector_norm"] = _reduce("norm", 2, 3)
RULES["norm"] = _reduce("norm", 2, 3)


@rule("_softmax", "softmax", "_log_softmax", "log_softmax", "_safe_softmax")
def _softmax(rec, args, kwargs, out):
    x = args[0]
    labs = rec.get(x)
    d = _n(args[1], x.dim())
    if is_labelled(labs[d]):
        rec.mark_approx(labs[d], "softmax over a channel dim")
    rec.set(out, labs)


# ---- matmul family ---------------------------------------------------------------------------------
def _mm(rec, a, b, out, name, bias=None):
    la, lb = list(rec.get(a)), list(rec.get(b))
    pa, pb = rec.is_param_view(a), rec.is_param_view(b)
    if a.dim() == 1:
        la = [None] + la
        ashape = (1,) + tuple(a.shape)
    else:
        ashape = tuple(a.shape)
    vec = b.dim() == 1
    if vec:
        lb = lb + [None]
        bshape = tuple(b.shape) + (1,)
    else:
        bshape = tuple(b.shape)
    k = rec.couple(la[-1], lb[-2], ashape[-1])
    nb = max(len(ashape), len(bshape)) - 2
    batch = []
    bsz = []
    for i in range(nb):
        ia = len(ashape) - 2 - nb + i
        ib = len(bshape) - 2 - nb + i
        sa = ashape[ia] if ia >= 0 else 1
        sb = bshape[ib] if ib >= 0 else 1
        xa = la[ia] if ia >= 0 and sa != 1 else ANY
        xb = lb[ib] if ib >= 0 and sb != 1 else ANY
        n = max(sa, sb)
        batch.append(rec.couple(xa, xb, n))
        bsz.append(n)
    if pa:
        rec.role(la[-2], "producer")
        rec.role(la[-1], "consumer")
    if pb:
        rec.role(lb[-1], "producer")
        rec.role(lb[-2], "consumer")
    res = batch + [la[-2], lb[-1]]
    factors = [_factor(l, s) for l, s in zip(batch, bsz)] + [_factor(la[-2], ashape[-2]), _factor(k, ashape[-1]),
                                                              _factor(lb[-1], bshape[-1])]
    rec.mac(name, factors)
    if a.dim() == 1:
        res.pop(-2)
    if vec:
        res.pop()
    if bias is not None:
        res = broadcast_couple_with(rec, res, tuple(out.shape), [bias])
    rec.set(out, res)


def _factor(lab, n):
    return lab if is_labelled(lab) else int(n)


def broadcast_couple_with(rec, res, shape, tensors):
    nd = len(shape)
    res = list(res)
    for t in tensors:
        labs = rec.get(t)
        off = nd - t.dim()
        for i, lab in enumerate(labs):
            d = off + i
            if t.shape[i] == 1 and shape[d] != 1:
                continue
            res[d] = rec.couple(res[d], lab, shape[d])
    return res


@rule("mm", "bmm", "matmul", "mv", "dot", "vdot", "_weight_int8pack_mm")
def _mm_rule(rec, args, kwargs, out):
    _mm(rec, args[0], args[1], out, "mm")


@rule("addmm", "baddbmm", "addmv", "addbmm")
def _addmm_rule(rec, args, kwargs, out):
    _mm(rec, args[1], args[2], out, "mm", bias=args[0])


@rule("linear")
def _linear(rec, args, kwargs, out):
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else None
    wt = w.t()
    rec.set(wt, list(rec.get(w))[::-1], rec.is_param_view(w))
    _mm(rec, x, wt, out, "mm", bias=b)


# ---- convolution -----------------------------------------------------------------------------------
@rule("convolution", "_convolution", "conv2d", "conv1d", "conv3d", "conv_transpose1d", "conv_transpose2d",
      "conv_transpose3d", "mkldnn_convolution", "_slow_conv2d_forward", "thnn_conv2d")
def _conv(rec, args, kwargs, out):
    x, w = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    transposed = bool(args[6]) if len(args) > 6 and isinstance(args[6], bool) else False
    groups = int(args[8]) if len(args) > 8 else 1
    batched = x.dim() == w.dim()
    cd = 1 if batched else 0
    lx = list(rec.get(x))
    lw = list(rec.get(w))
    for d in range(2, w.dim()):
        rec.kill(lw[d], "convolution kernel dim")
    for d in range(cd + 1, x.dim()):
        rec.kill(lx[d], "convolution mixes spatial positions")
    C = x.shape[cd]
    xin = lx[cd]
    g = groups
    if not transposed:
        O, Cg = w.shape[0], w.shape[1]
        Og = O // g
        if g == 1:
            rec.couple(xin, lw[1], C)
            outl = lw[0]
        elif Cg == 1:  # depthwise: input channel i feeds output channels of group i
            xa = as_array(xin, C)
            rec.kill(lw[1], "depthwise kernel in-dim")
            wa = lw[0].reshape(g, Og)
            rec.unify(np.repeat(xa, Og), wa.reshape(-1))
            rec.kill(np.where(np.repeat(xa, Og) == NONE_ID, wa.reshape(-1), -1), "depthwise conv of unlabelled data")
            outl = lw[0]
        else:
            xcol = rec.unify_cols(as_array(xin, C), g)
            rec.couple(xcol, lw[1], Cg)
            rec.unify_cols(lw[0], g)
            outl = lw[0]
        rec.role(lw[0], "producer")
        rec.role(lw[1], "consumer")
        spatial = list(out.shape[cd + 1:])
        factors = ([int(x.shape[0])] if batched else []) + spatial + list(w.shape[2:]) + \
                  [_factor(outl, O), _factor(lw[1], Cg)]
    else:
        Cin, Og = w.shape[0], w.shape[1]
        O = Og * g
        if g == 1:
            rec.couple(xin, lw[0], C)
            outl = lw[1]
        elif Cin // g == 1:
            rec.couple(xin, lw[0], C)
            rec.kill(lw[1], "depthwise transposed kernel out-dim")
            outl = np.repeat(as_array(xin, C), Og)
        else:
            xcol = rec.unify_cols(as_array(xin, C), g)
            rec.unify_cols(lw[0], g)
            rec.couple(as_array(xin, C), lw[0], C)
            outl = np.tile(lw[1], g)
        rec.role(lw[1], "producer")
        rec.role(lw[0], "consumer")
        spatial = list(x.shape[cd + 1:])
        factors = ([int(x.shape[0])] if batched else []) + spatial + list(w.shape[2:]) + \
                  [_factor(lx[cd] if is_labelled(lx[cd]) else None, C) if is_labelled(lx[cd]) else int(C),
                   _factor(lw[1], Og)]
    if isinstance(bias, torch.Tensor):
        outl = rec.couple(outl, rec.get(bias)[0], O)
    rec.mac("conv", factors)
    res = [None] * out.dim()
    if batched:
        res[0] = lx[0]
    res[cd] = outl
    rec.set(out, res)


# ---- normalisation ---------------------------------------------------------------------------------
@rule("native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training", "batch_norm",
      "_batch_norm_impl_index", "_native_batch_norm_legit_functional", "cudnn_batch_norm",
      "miopen_batch_norm", "instance_norm")
def _batch_norm(rec, args, kwargs, out):
    x = args[0]
    lx = list(rec.get(x))
    cd = 1 if x.dim() > 1 else 0
    c = lx[cd]
    for t in args[1:5]:
        if isinstance(t, torch.Tensor) and t.dim() == 1:
            c = rec.couple(c, rec.get(t)[0], x.shape[cd])
    lx[cd] = c
    o = _first_tensor_out(out)
    rec.set(o, lx)
    if isinstance(out, (tuple, list)):
        for extra in out[1:]:
            if isinstance(extra, torch.Tensor) and extra.dim() == 1 and extra.shape[0] == x.shape[cd]:
                rec.set(extra, [c])


@rule("native_layer_norm", "layer_norm", "rms_norm", "_fused_rms_norm")
def _layer_norm(rec, args, kwargs, out):
    x = args[0]
    ns = list(args[1])
    k = len(ns)
    lx = list(rec.get(x))
    for t in args[2:4]:
        if isinstance(t, torch.Tensor):
            lt = rec.get(t)
            for i in range(k):
                d = x.dim() - k + i
                lx[d] = rec.couple(lx[d], lt[i], x.shape[d])
    for i in range(k):
        rec.mark_approx(lx[x.dim() - k + i], "layer norm normalises over this dim")
    o = _first_tensor_out(out)
    rec.set(o, lx)


@rule("native_group_norm", "group_norm")
def _group_norm(rec, args, kwargs, out):
    x, w, b = args[0], args[1], args[2]
    G = args[6] if len(args) > 6 and isinstance(args[6], int) else (args[1] if isinstance(args[1], int) else 1)
    if not isinstance(w, torch.Tensor) and not isinstance(w, type(None)):
        w = None
    lx = list(rec.get(x))
    C = x.shape[1]
    c = lx[1]
    for t in (w, b):
        if isinstance(t, torch.Tensor):
            c = rec.couple(c, rec.get(t)[0], C)
    if is_labelled(c):
        if G == 1:
            rec.mark_approx(c, "group norm with one group normalises over all channels")
        elif C // G > 1:
            rec.unify_rows(c, G)
    lx[1] = c
    rec.set(_first_tensor_out(out), lx)


@rule("_prelu_kernel", "prelu")
def _prelu(rec, args, kwargs, out):
    x, w = args[0], args[1]
    res = broadcast_couple(rec, [x, w], tuple(out.shape))
    rec.set(out, res)


# ---- embedding --------------------------------------------------------------------------------------
@rule("embedding")
def _embedding(rec, args, kwargs, out):
    w, idx = args[0], args[1]
    lw = rec.get(w)
    rec.kill(lw[0], "embedding rows are indexed by data")
    rec.role(lw[1], "producer")
    rec.kill_all(rec.get(idx), "used as an index")
    rec.set(out, [None] * idx.dim() + [lw[1]])


# ---- attention ---------------------------------------------------------------------------------------
@rule("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
      "_scaled_dot_product_efficient_attention", "_scaled_dot_product_attention_math",
      "scaled_dot_product_attention", "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_fused_attention_overrideable",
      "_scaled_dot_product_attention_math_for_mps")
def _sdpa(rec, args, kwargs, out):
    q, k, v = args[0], args[1], args[2]
    lq, lk, lv = list(rec.get(q)), list(rec.get(k)), list(rec.get(v))
    nd = q.dim()
    mask = args[3] if len(args) > 3 and isinstance(args[3], torch.Tensor) else kwargs.get("attn_mask")
    for t in list(args[4:]) + [v for k, v in kwargs.items() if k != "attn_mask"]:
        if isinstance(t, torch.Tensor) and rec.known(t):
            rec.kill_all(rec.get(t), "extra attention input")
    batch = []
    for i in range(nd - 2):
        sq, sk = q.shape[i], k.shape[i]
        if sq == sk:
            c = rec.couple(lq[i], lk[i], sq)
            c = rec.couple(c, lv[i], sq)
        elif sq == 1 or sq % sk:
            rec.kill_all([lq[i], lk[i], lv[i]], "attention batch dims that do not divide")
            c = None
        else:  # grouped-query attention (or one shared key/value head): query head i reads kv head i // (Hq / Hk)
            rep = sq // sk
            kv = rec.couple(lk[i], lv[i], sk)
            kvr = np.repeat(as_array(kv, sk), rep) if (is_labelled(kv) or kv is None) else kv
            c = rec.couple(lq[i], kvr, sq)
        batch.append(c)
    rec.couple(lq[-1], lk[-1], q.shape[-1])
    rec.couple(lk[-2], lv[-2], k.shape[-2])
    if isinstance(mask, torch.Tensor) and rec.known(mask):
        # an additive mask / position bias is added to the scores [*batch, Tq, Tk]: per-head biases (T5)
        # tie the heads of every layer that shares them
        scores = batch + [lq[-2], lk[-2]]
        shape = tuple(q.shape[:-1]) + (k.shape[-2],)
        lm = rec.get(mask)
        off = len(shape) - mask.dim()
        for i, lab in enumerate(lm):
            d = off + i
            if mask.shape[i] == 1 and shape[d] != 1:
                continue
            scores[d] = rec.couple(scores[d], lab, shape[d])
        batch = scores[:nd - 2]
    o = _first_tensor_out(out)
    res = batch + [lq[-2], lv[-1]]
    rec.set(o, res)
    bf = [_factor(l, s) for l, s in zip(batch, q.shape[:-2])]
    rec.mac("sdpa", bf + [int(q.shape[-2]), int(k.shape[-2]), _factor(lq[-1], q.shape[-1])])
    rec.mac("sdpa", bf + [int(q.shape[-2]), int(k.shape[-2]), _factor(lv[-1], v.shape[-1])])
    if isinstance(out, (tuple, list)):
        for extra in out[1:]:
            if isinstance(extra, torch.Tensor):
                rec.set(extra, [None] * extra.dim())


# ---- spatial ops: channel and batch dims pass, spatial dims are mixed ----------------------------------
@rule("max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices", "max_pool3d_with_indices",
      "max_pool1d_with_indices", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
      "adaptive_avg_pool2d", "adaptive_avg_pool3d", "_adaptive_avg_pool2d", "_adaptive_avg_pool3d",
      "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d", "upsample_nearest1d",
      "upsample_nearest2d", "upsample_nearest3d", "upsample_bilinear2d", "upsample_bicubic2d", "upsample_linear1d",
      "upsample_trilinear3d", "_upsample_nearest_exact1d", "_upsample_nearest_exact2d", "_upsample_nearest_exact3d",
      "_upsample_bilinear2d_aa", "_upsample_bicubic2d_aa", "reflection_pad1d", "reflection_pad2d",
      "reflection_pad3d", "replication_pad1d", "replication_pad2d", "replication_pad3d", "grid_sampler_2d",
      "grid_sampler", "mkldnn_max_pool2d", "fractional_max_pool2d", "_pad_circular", "pad")
def _spatial(rec, args, kwargs, out):
    x = args[0]
    lx = list(rec.get(x))
    nsp = {"1d": 1, "2d": 2, "3d": 3}
    outs = [o for o in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(o, torch.Tensor)]
    o0 = outs[0]
    # channel dim: the one before the spatial dims; at least dims 0..nd-nsp-1 pass through
    name = str(getattr(rec, "_cur", ""))
    k = next((v for key, v in nsp.items() if key in name), x.dim() - 2 if x.dim() > 2 else 1)
    nd = x.dim()
    keep = max(nd - k, 1) if o0.dim() == nd else 0
    for d in range(keep, nd):
        rec.kill(lx[d], "spatial op over this dim")
    res = [lx[d] if d < keep else None for d in range(nd)]
    for o in outs:
        if o.dim() == nd:
            rec.set(o, res)


@rule("torchvision.roi_align", "torchvision.roi_pool")
def _roi_pool(rec, args, kwargs, out):
    """``roi_align(x [N, C, H, W], rois [K, 5], ...) -> [K, C, h, w]``: channels pass through; the batch and
    spatial dims of ``x`` are resampled per box."""
    x = args[0]
    lx = list(rec.get(x))
    for d in (0, 2, 3):
        rec.kill(lx[d], "resampled per region of interest")
    for t in [a for a in args[1:] if isinstance(a, torch.Tensor)]:
        rec.kill_all(rec.get(t), "region-of-interest boxes")
    outs = [o for o in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(o, torch.Tensor)]
    rec.set(outs[0], [None, lx[1], None, None])
    for o in outs[1:]:  # roi_pool's argmax
        rec.set(o, [None] * o.dim())


@rule("constant_pad_nd")
def _pad(rec, args, kwargs, out):
    x = args[0]
    pad = list(args[1])
    lx = list(rec.get(x))
    for i in range(len(pad) // 2):
        d = x.dim() - 1 - i
        if pad[2 * i] or pad[2 * i + 1]:
            rec.kill(lx[d], "padding of a channel dim")
            lx[d] = None
    rec.set(out, lx)


@rule("pixel_shuffle")
def _pixel_shuffle(rec, args, kwargs, out):
    x, r = args[0], int(args[1])
    lx = list(rec.get(x))
    cd = x.dim() - 3
    c = lx[cd]
    res = [None] * out.dim()
    for d in range(cd):
        res[d] = lx[d]
    for d in range(cd + 1, x.dim()):
        rec.kill(lx[d], "pixel shuffle spatial dim")
    if is_labelled(c):
        res[cd] = rec.unify_rows(c, out.shape[cd])
    rec.set(out, res)


@rule("pixel_unshuffle")
def _pixel_unshuffle(rec, args, kwargs, out):
    x, r = args[0], int(args[1])
    lx = list(rec.get(x))
    cd = x.dim() - 3
    res = [None] * out.dim()
    for d in range(cd):
        res[d] = lx[d]
    for d in range(cd + 1, x.dim()):
        rec.kill(lx[d], "pixel unshuffle spatial dim")
    if is_labelled(lx[cd]):
        res[cd] = np.repeat(lx[cd], r * r)
    rec.set(out, res)


@rule("channel_shuffle", "native_channel_shuffle")
def _channel_shuffle(rec, args, kwargs, out):
    x, g = args[0], int(args[1])
    lx = list(rec.get(x))
    c = lx[1]
    if is_labelled(c):
        col = rec.unify_cols(c, g)
        lx[1] = np.tile(col, g)  # after unifying columns, the permutation maps each column onto itself
    rec.set(out, lx)


# ---- recurrent -----------------------------------------------------------------------------------------
@rule("mkldnn_rnn_layer")
def _mkldnn_rnn_layer(rec, args, kwargs, out):
    x, w_ih, w_hh, b_ih, b_hh, hx, cx = args[:7]
    mode = args[9] if len(args) > 9 else 2
    H = int(args[10]) if len(args) > 10 else w_hh.shape[1]
    gates = w_ih.shape[0] // H
    batch_first = bool(args[14]) if len(args) > 14 else False
    lx = list(rec.get(x))
    lih, lhh = rec.get(w_ih), rec.get(w_hh)
    rec.couple(lx[-1], lih[1], x.shape[-1])
    gate = rec.unify_cols(lih[0], gates)
    gate = rec.couple(gate, rec.unify_cols(lhh[0], gates), H)
    for b in (b_ih, b_hh):
        if isinstance(b, torch.Tensor) and b.dim() == 1 and b.shape[0] == gates * H:
            gate = rec.couple(gate, rec.unify_cols(rec.get(b)[0], gates), H)
    gate = rec.couple(gate, lhh[1], H)
    for h in (hx, cx):
        if isinstance(h, torch.Tensor) and h.shape[-1] == H:
            gate = rec.couple(gate, rec.get(h)[-1], H)
    rec.role(lih[0], "producer")
    rec.role(lih[1], "consumer")
    T = x.shape[1] if batch_first else x.shape[0]
    B = x.shape[0] if batch_first else x.shape[1]
    rec.mac("rnn", [int(T * B), _factor(gate if is_labelled(gate) else None, H), gates,
                    _factor(lih[1], x.shape[-1])])
    rec.mac("rnn", [int(T * B), _factor(gate if is_labelled(gate) else None, H), gates,
                    _factor(lhh[1], H)])
    outs = [o for o in out if isinstance(o, torch.Tensor)]
    for o in outs:
        if o.dim() >= 1 and o.shape[-1] == H:
            lo = [None] * o.dim()
            lo[-1] = gate
            if o.dim() == x.dim():
                lo[0 if batch_first else 1] = lx[0 if batch_first else 1]
            rec.set(o, lo)


@rule("_grouped_mm")
def _grouped_mm(rec, args, kwargs, out):
    """Mixture-of-experts expert products: tokens [T, K] grouped by expert against weights [E, K, N]."""
    a, b = args[0], args[1]
    la, lb = rec.get(a), rec.get(b)
    if a.dim() == 2 and b.dim() == 3:
        k = rec.couple(la[1], lb[1], a.shape[1])
        rec.kill(lb[0], "expert dim of a grouped matmul")
        if rec.is_param_view(b):
            rec.role(lb[2], "producer")
            rec.role(lb[1], "consumer")
        rec.mac("grouped_mm", [int(a.shape[0]), _factor(k, a.shape[1]), _factor(lb[2], b.shape[2])])
        rec.set(out, [la[0], lb[2]])
        return
    rec.kill_all(la, "grouped matmul layout")
    rec.kill_all(lb, "grouped matmul layout")
    rec.set(out, [None] * out.dim())
