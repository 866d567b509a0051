"""``plan`` and ``plan_channels``: which channels to remove (the model is not changed)."""
from __future__ import annotations

import logging
import math
import re
import weakref

import numpy as np
from torch import nn

from .._checks import checked
from .._registry import closest
from ..allocate import allocate_to_target, kept_at, parse_target, select_removal
from ..criteria import nisp
from ..errors import ConfigError
from ..graph import Graph, build_graph
from ..graph.trace import MadeUpValue
from .options import (TRACES, _check_device, _check_keep_outputs, _module_fqns, _resolve_allocation_reduce,
                      _validate)
from .plans import Plan, PlanGroup
from .scoring import _module_of, score_groups

__all__ = ["plan", "plan_channels"]

log = logging.getLogger(__name__)


def _segments(graph: Graph) -> list:
    """Split each group into the channel sets of distinct producers ``[(group id, channels, modules)]``.

    A concat reader couples several producers into one group; budgets apply per producer segment so that
    no layer is emptied and uniform sparsity means what users expect (each layer loses the same fraction).
    """
    segs = []
    for g in graph.groups:
        prods = g.producers
        mods_all = sorted({_module_of(m.fqn) for m in (prods or g.members)})
        if len(prods) <= 1:
            segs.append((g.id, np.arange(g.width), mods_all))
            continue
        mat = np.zeros((g.width, len(prods)), bool)
        for i, m in enumerate(prods):
            mat[m.channel[m.channel >= 0], i] = True
        keys, inv = np.unique(mat, axis=0, return_inverse=True)
        inv = np.asarray(inv).reshape(-1)
        for k in range(len(keys)):
            chans = np.nonzero(inv == k)[0]
            mods = sorted({_module_of(prods[i].fqn) for i in np.nonzero(keys[k])[0]}) or mods_all
            segs.append((g.id, chans, mods))
    return segs


def _removal(segs: list, seg_scores: list, kept: list) -> dict:
    """``{group id: channels to remove}`` when segment ``i`` keeps ``kept[i]`` channels: the lowest-scoring
    channels beyond each kept width go (the one selection of ``plan``, ``Subnets`` and the search methods)."""
    removal: dict = {}
    for i, idx in select_removal(seg_scores, kept).items():
        gid, chans, _ = segs[i]
        removal.setdefault(gid, []).append(chans[idx])
    return {g: np.sort(np.concatenate(v)) for g, v in removal.items()}


def _match_segments(segs: list, per_layer: dict) -> dict:
    """{segment index: sparsity} from per-layer overrides keyed by module FQN or 're:' regex."""
    res = {}
    problems = []
    for key, s in per_layer.items():
        hit = False
        rx = re.compile(key[3:]) if isinstance(key, str) and key.startswith("re:") else None
        for i, (_, _, mods) in enumerate(segs):
            if any((rx.fullmatch(mf) if rx else mf == key) for mf in mods):
                res[i] = float(s)
                hit = True
        if not hit:
            names = sorted({mf for _, _, mods in segs for mf in mods})
            hint = closest(key[3:] if rx else key, names)
            problems.append(f"per_layer key {key!r} matches no prunable layer" +
                            (f"; did you mean {hint!r}?" if hint else "") +
                            f" Prunable layers: {', '.join(names[:20])}{', ...' if len(names) > 20 else ''}")
    if problems:
        raise ConfigError("; ".join(problems))
    return res


@checked(verb="prune")
def plan(model: nn.Module, example_inputs, *, sparsity: float | None = None, target: str | None = None,
         criterion: str = "l2", calib=None, ignore=(), allocation: str = "uniform", round_to: int = 1,
         min_channels: int = 1, loss_fn=None, reduce: str | None = None, per_layer: dict | None = None,
         seed: int = 0, trace: str = "auto", global_: bool | None = None, keep_outputs="all") -> Plan:
    """Decide which channels to remove; changes nothing.

    ``criterion`` scores channels (default ``"l2"``); ``reduce`` says whose weights score a coupled channel:
    ``"producer"`` (the layers whose outputs the channels are; the papers' definition of ``l1``/``l2``/``fpgm``
    and their default) or ``"group"`` (the mean over every coupled member, the default of the other
    criteria). ``allocation``: ``"uniform"`` (the same fraction from every layer) or ``"global"`` (one ranking
    of mean-normalised scores over all layers); ``per_layer={fqn or 're:regex': sparsity}`` overrides single
    layers. With ``target="macs=<fraction kept>"`` (or ``params=``) the plan lands within the budget and as
    close to it as single channels (``round_to`` units) allow. ``global_=True`` is the deprecated spelling
    of ``allocation="global"``.

    ``keep_outputs``: the outputs whose shapes must not change — ``"all"`` (default), or the names (dict or
    ``ModelOutput`` returns) or indices (tuples) of the top-level outputs to keep; every other output may
    narrow (a ``BertModel`` whose user reads only ``pooler_output`` lets its hidden stream shrink), and the
    report's ``outputs_changed`` lists each output whose shape changed.

    ``trace``: ``"auto"`` (default) traces without the arithmetic of weight-reading convs and matmuls when no
    calibration data is given (docs/engine.md, the fast trace; a made-up value that could steer the forward
    sends it to a real trace at once, and ``prune_`` confirms the rest on the pruned model); ``"real"``
    always traces with real values.

    Example:
        >>> import prunekit as pk
        >>> from prunekit.testing import models
        >>> model, x = models()["residual"]()
        >>> p = pk.plan(model, x, sparsity=0.5)
        >>> p.predicted["params_after"] < p.predicted["params_before"]
        True
    """
    return _plan(model, example_inputs, sparsity=sparsity, target=target, criterion=criterion, calib=calib,
                 ignore=ignore, allocation=allocation, round_to=round_to, min_channels=min_channels, loss_fn=loss_fn,
                 reduce=reduce, per_layer=per_layer, seed=seed, trace=trace, global_=global_,
                 keep_outputs=keep_outputs)


def _plan(model: nn.Module, example_inputs, *, sparsity=None, target=None, criterion="l2", calib=None, ignore=(),
          allocation="uniform", round_to=1, min_channels=1, loss_fn=None, reduce=None, per_layer=None, seed=0,
          trace="auto", global_=None, keep_outputs="all", confirmed_at_once: bool = False) -> Plan:
    """The body of :func:`plan` (same arguments, checked by the caller's ``@checked``);
    ``confirmed_at_once``: the caller (``prune_``) applies the plan at once, so the pruned model's forward
    confirms a fast trace even with tensors of unknown origin (see :func:`_plan_graph`)."""
    per_layer = dict(per_layer or {})
    _validate(sparsity, target, criterion, global_, round_to, min_channels, reduce, per_layer)
    if trace not in TRACES:
        hint = closest(str(trace), list(TRACES))
        raise ConfigError(f"trace={trace!r} is not valid" + (f"; did you mean {hint!r}?" if hint else "") +
                          f"; choose one of {', '.join(map(repr, TRACES))}")
    allocation, reduce = _resolve_allocation_reduce(allocation, global_, reduce, criterion)
    ignore_modules = _module_fqns(model, ignore, "ignore") if ignore else {}
    _check_device(model, example_inputs)
    _check_keep_outputs(keep_outputs)
    graph = _plan_graph(model, example_inputs, ignore_modules, fast=trace == "auto" and calib is None,
                        confirmed_at_once=confirmed_at_once, keep_outputs=keep_outputs)
    scorer = _whole_network_scorer(criterion, model, example_inputs, calib, ignore)
    scores = score_groups(model, graph, criterion, calib=calib, loss_fn=loss_fn, reduce=reduce, seed=seed,
                          scorer=scorer)
    segs = _segments(graph)
    overrides = _match_segments(segs, per_layer) if per_layer else {}
    widths = [len(c) for _, c, _ in segs]
    seg_scores = [scores[gid][chans] for gid, chans, _ in segs]
    how = dict(allocation=allocation, round_to=round_to, min_channels=min_channels, fixed=overrides)

    def removal_of(kept: list) -> dict:
        return _removal(segs, seg_scores, kept)

    base = 0.0 if sparsity is None else float(sparsity)
    if target is not None:
        kind, frac = parse_target(target)
        cost = graph.macs if kind == "macs" else graph.params
        budget = int(math.floor(cost() * frac))
        try:
            kept, base = allocate_to_target(widths, seg_scores, lambda k: cost(graph.removed_flat(removal_of(k))),
                                            budget, **how)
        except ConfigError as e:
            raise ConfigError(f"target={target!r}: {e}") from None
    else:
        kept = kept_at(widths, seg_scores, base, **how)
    removal = removal_of(kept)
    zero = sorted({graph.groups[segs[i][0]].name for i, k in enumerate(kept) if k == 0 and widths[i] > 0})
    if zero:
        raise ConfigError(f"groups {zero[:5]} would reach zero width (min_channels={min_channels}); raise "
                          f"min_channels to >= 1 or lower the sparsity")
    settings = {"sparsity": base if (sparsity is not None or target is not None) else None, "target": target,
                "criterion": criterion, "allocation": allocation, "round_to": round_to, "min_channels": min_channels,
                "reduce": reduce, "per_layer": per_layer, "ignore": sorted(ignore_modules.values()), "seed": seed,
                "keep_outputs": keep_outputs if keep_outputs == "all" else list(graph.rec.keep_keys)}
    return _make_plan(model, graph, removal, settings, example_inputs)


def _plan_graph(model, example_inputs, ignore_modules: dict, fast: bool, confirmed_at_once: bool,
                keep_outputs="all") -> Graph:
    """The graph a plan is made on: a fast trace when allowed, and a real one when a made-up value could
    have steered the fast trace's forward. A plan that leaves prune_ is confirmed only when it is applied,
    so for it a tensor of unknown origin (which the fast checks cannot follow) means a real trace too;
    ``confirmed_at_once``: prune_ applies the plan right away and confirms the trace on the pruned model."""
    if fast:
        try:
            graph = build_graph(model, example_inputs, ignore_modules=ignore_modules, fast=True,
                                keep_outputs=keep_outputs)
            if not graph.rec.unaccounted or confirmed_at_once:
                return graph
            log.debug("fast trace not used (%s); tracing with real values", graph.rec.unaccounted[0])
        except MadeUpValue as e:
            log.debug("fast trace not used (%s); tracing with real values", e)
    return build_graph(model, example_inputs, ignore_modules=ignore_modules, keep_outputs=keep_outputs)


def _whole_network_scorer(criterion: str, model, example_inputs, calib, ignore):
    """``nisp`` scores every channel from one backward propagation through the whole network: the scores of
    the caller's :func:`~prunekit.criteria.nisp.nisp_context` (which carries its options), else computed here
    from ``calib``; returned as the per-member score function :func:`score_groups` uses (None: the
    criterion's own function)."""
    if criterion != "nisp":
        return None
    table = nisp.active_scores()
    if table is None and calib is not None:
        table = nisp.nisp_scores(model, example_inputs, calib, ignore=tuple(ignore))
    return None if table is None else nisp.scorer(table)


def _make_plan(model, graph: Graph, removal: dict, settings: dict, example_inputs) -> Plan:
    """The :class:`Plan` that removes ``removal`` ({group id: group channels}) from ``graph``."""
    removed = graph.removed_flat(removal)
    pgroups = []
    shapes = {}
    for g in graph.groups:
        chans = removal.get(g.id, np.zeros(0, np.int64))
        mems = []
        for m in g.members:
            mems.append({"fqn": m.fqn, "dim": m.dim, "size": m.size,
                         "indices": m.positions(chans).tolist() if len(chans) else [], "role": m.role})
            shapes[m.fqn] = tuple(graph.rec.tensors[m.fqn].shape)
        pgroups.append(PlanGroup(g.id, g.name, g.width, g.width - len(chans), [int(c) for c in chans], mems,
                                 list(g.approximate)))
    predicted = {"params_before": graph.params(), "params_after": graph.params(removed),
                 "macs_before": graph.macs(), "macs_after": graph.macs(removed)}
    skipped = [{"where": f"{n.fqn}[{n.dim}]", "reason": n.reason} for n in graph.nonprunable
               if "kernel" not in n.reason]
    return Plan(pgroups, predicted, settings, shapes, skipped, _graph=graph, _model=weakref.ref(model),
                _example_inputs=example_inputs)


def plan_channels(model: nn.Module, example_inputs, channels: dict, *, ignore=(), keep_outputs="all") -> Plan:
    """A plan that removes exactly the given channels (and everything coupled to them); changes nothing.

    ``channels`` maps a layer (module FQN such as ``"layer1.0.conv1"``, or a parameter FQN such as
    ``"layer1.0.conv1.weight"``) to the indices of its output channels to remove; for a module the member
    is its ``weight`` along the output dim. Channels coupled to them (a residual sum, a BatchNorm, the next
    layer's inputs, every layer sharing the same group) go with them, as in :func:`plan`. This is the verb for
    methods that choose channels themselves (training-time gates, sparsity regularisers, a user's own
    criterion); apply the plan with ``prune_(model, plan)``.

    Errors (the model is never touched): an unknown layer (closest names suggested), a layer whose channels
    cannot be removed (an output head, an ignored module), an index out of range, an index that is only part
    of a coupled channel (e.g. one position of an attention head: pass all its positions), two layers of one
    group asking for different channels, or a group that would lose every channel.

    Example:
        >>> import prunekit as pk
        >>> from prunekit.testing import models
        >>> model, x = models()["residual"]()
        >>> p = pk.plan_channels(model, x, {"a": [0, 2]})
        >>> pk.prune_(model, p).params_after < p.predicted["params_before"]
        True
    """
    if not isinstance(channels, dict) or not channels:
        raise ConfigError(f"channels={channels!r} must be a non-empty dict {{layer fqn: [output channel "
                          f"indices]}}, e.g. {{'conv1': [0, 3]}}")
    ignore_modules = _module_fqns(model, ignore, "ignore") if ignore else {}
    _check_device(model, example_inputs)
    _check_keep_outputs(keep_outputs)
    graph = build_graph(model, example_inputs, ignore_modules=ignore_modules, keep_outputs=keep_outputs)
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    by_member = {(m.fqn, m.dim): (g, m) for g in graph.groups for m in g.members}
    blocked = {(n.fqn, n.dim): n.reason for n in graph.nonprunable}
    removal: dict = {}
    asked_by: dict = {}
    for key, idx in channels.items():
        if key in params:
            fqn = key
        elif key in modules and f"{key}.weight" in params:
            fqn = f"{key}.weight"
        else:
            hint = closest(key, [*modules, *params])
            raise ConfigError(f"channels: {key!r} is neither a module with a weight nor a parameter of the model"
                              + (f"; did you mean {hint!r}?" if hint else ""))
        mod = modules.get(fqn.rsplit(".", 1)[0]) if "." in fqn else model
        dim = 1 if isinstance(mod, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) else 0
        t = params[fqn]
        try:
            idx = np.asarray(sorted({int(i) for i in idx}), dtype=np.int64)
        except (TypeError, ValueError):
            raise ConfigError(f"channels[{key!r}]={idx!r} must be a list of int channel indices") from None
        if len(idx) and (idx.min() < 0 or idx.max() >= t.shape[dim]):
            raise ConfigError(f"channels[{key!r}] has index {int(idx.min() if idx.min() < 0 else idx.max())} "
                              f"outside [0, {t.shape[dim]}) (the output channels of {fqn!r}, dim {dim})")
        hit = by_member.get((fqn, dim))
        if hit is None:
            why = blocked.get((fqn, dim), "it is not part of any prunable group")
            raise ConfigError(f"channels[{key!r}]: the output channels of {fqn!r} cannot be removed: {why}")
        g, m = hit
        if not len(idx):
            continue
        chans = m.channel[idx]
        if (chans < 0).any():
            raise ConfigError(f"channels[{key!r}]: index {int(idx[chans < 0][0])} of {fqn!r} is kept always "
                              f"(it is coupled to something that cannot shrink)")
        chans = np.unique(chans)
        if not np.array_equal(m.positions(chans), idx):
            raise ConfigError(f"channels[{key!r}]: the indices cover only part of a coupled channel of {fqn!r} "
                              f"(e.g. an attention head); pass all of its positions: "
                              f"{m.positions(chans).tolist()[:16]}")
        if g.id in removal and not np.array_equal(removal[g.id], chans):
            raise ConfigError(f"channels[{key!r}] and channels[{asked_by[g.id]!r}] are coupled in one group "
                              f"({g.name}) but ask for different channels; give the indices through one of them")
        removal[g.id], asked_by[g.id] = chans, key
    for gid, chans in removal.items():
        if len(chans) >= graph.groups[gid].width:
            raise ConfigError(f"channels[{asked_by[gid]!r}] removes every channel of group "
                              f"{graph.groups[gid].name}; keep at least one")
    settings = {"channels": {k: sorted(int(i) for i in v) for k, v in channels.items()},
                "ignore": sorted(ignore_modules.values()),
                "keep_outputs": keep_outputs if keep_outputs == "all" else list(graph.rec.keep_keys)}
    return _make_plan(model, graph, removal, settings, example_inputs)
