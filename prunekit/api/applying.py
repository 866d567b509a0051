"""``prune_``: apply a plan (or one made from plan keywords) in place, and report what changed."""
from __future__ import annotations

import logging

import numpy as np
from torch import nn

from .._checks import checked
from ..errors import BrokenForward, ConfigError, PrunekitError, TraceNotConfirmed
from ..graph import build_graph
from ..surgery import find_breaking_groups, remove_channels_
from ..surgery.hf_config import is_hf_model, sync_config_
from .planning import _plan, plan
from .plans import Plan
from .reports import Report

__all__ = ["prune_", "count_params", "TraceNotConfirmed", "BrokenForward"]

log = logging.getLogger(__name__)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _graph_for(model, p: Plan, example_inputs, real_trace: bool = False):
    same_model = p._graph is not None and p._model is not None and p._model() is model
    if same_model and not (real_trace and p._graph.rec.fast):
        return p._graph, p._example_inputs if example_inputs is None else example_inputs
    if same_model and example_inputs is None:
        example_inputs = p._example_inputs
    if example_inputs is None:
        raise ConfigError("prune_(model, plan): this plan was loaded or made for another model object; pass "
                          "example_inputs=... so the model can be traced again")
    named = dict(model.named_modules())
    ignore = {id(named[n]): n for n in p.settings.get("ignore", []) if n in named}
    return build_graph(model, example_inputs, ignore_modules=ignore,
                       keep_outputs=p.settings.get("keep_outputs", "all")), example_inputs


@checked(verb="prune", extra_from=plan)
def prune_(model: nn.Module, plan: Plan | None = None, *, example_inputs=None, optimizer=None,
           **plan_kwargs) -> Report:
    """Apply ``plan`` (or build one from ``plan_kwargs``) to ``model`` in place and report what changed.

    Example:
        >>> import prunekit as pk
        >>> from prunekit.testing import models
        >>> model, x = models()["concat"]()
        >>> r = pk.prune_(model, example_inputs=x, sparsity=0.25)
        >>> r.params_after < r.params_before
        True
    """
    if plan is None:
        if example_inputs is None:
            raise ConfigError("prune_(model) needs either a plan or example_inputs=... with plan keywords "
                              "(e.g. sparsity=0.5)")
        if plan_kwargs.get("calib") is None and plan_kwargs.get("trace", "auto") == "auto":
            # first on a fast trace; trusted only when the pruned model's forward issues the same ops, else (or on
            # any failure) the model is as before and is planned again on a trace with real values
            try:
                own = _plan(model, example_inputs, **plan_kwargs, confirmed_at_once=True)
                return _apply(model, own, example_inputs, optimizer, own_plan=True)
            except PrunekitError as e:
                log.debug("fast trace not used (%s); tracing with real values", e)
            plan_kwargs = {**plan_kwargs, "trace": "real"}
        return _apply(model, _plan(model, example_inputs, **plan_kwargs), example_inputs, optimizer, own_plan=True)
    if plan_kwargs:
        raise ConfigError(f"prune_(model, plan, ...) got plan keywords {sorted(plan_kwargs)}; give either a "
                          f"plan or keywords to build one, not both")
    if not isinstance(plan, Plan):
        raise ConfigError(f"plan={type(plan).__name__} is not a prunekit Plan; build one with pk.plan(...)")
    try:
        return _apply(model, plan, example_inputs, optimizer)
    except TraceNotConfirmed as e:
        # a plan made on a fast trace that the pruned model's forward did not confirm (the model is as before):
        # it still applies if a trace with real values gives the same groups (else a stale-plan error)
        log.debug("the plan's fast trace was not confirmed (%s); tracing with real values", e)
        try:
            return _apply(model, plan, example_inputs, optimizer, real_trace=True)
        except ConfigError as stale:
            raise ConfigError(f"this plan was made on a trace without weight arithmetic, which the pruned model's "
                              f"forward did not confirm, and a trace with real values couples other channels "
                              f"({stale}); make the plan with pk.plan(..., trace='real')") from e


def _apply(model: nn.Module, plan_: Plan, example_inputs, optimizer, own_plan: bool = False,
           real_trace: bool = False) -> Report:
    """The body of :func:`prune_`; ``own_plan``: the plan was made by prune_ itself and never left it."""
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    stale = [(f, s, tuple(tensors[f].shape) if f in tensors else None) for f, s in plan_.shapes.items()
             if f not in tensors or tuple(tensors[f].shape) != tuple(s)]
    if stale:
        f, s, now = stale[0]
        raise ConfigError(f"stale plan: {f!r} had shape {tuple(s)} when planned but is {now} now "
                          f"({len(stale)} tensors differ); make a new plan for the current model")
    graph, ex = _graph_for(model, plan_, example_inputs, real_trace)
    index = {tuple(sorted((m.fqn, m.dim) for m in g.members)): g for g in graph.groups}
    removal = {}
    index_id = {}
    for pg in plan_.groups:
        if not pg.channels:
            continue
        key = tuple(sorted((m["fqn"], m["dim"]) for m in pg.members))
        g = index.get(key)
        index_id[pg.id] = g.id if g is not None else -1
        if g is None or g.width != pg.width:
            raise ConfigError(f"stale plan: group {pg.name!r} no longer matches the model's coupled layers; "
                              f"make a new plan")
        removal[g.id] = np.asarray(pg.channels, dtype=np.int64)
    params_before = count_params(model)
    skipped = list(plan_.skipped)
    cuts = None
    if own_plan:  # a plan no caller could edit: its member indices are exactly the removal's positions
        cuts = {}
        for pg in plan_.groups:
            for m in pg.members:
                if m["indices"]:
                    cuts.setdefault(m["fqn"], {})[m["dim"]] = m["indices"]
    try:
        remove_channels_(model, graph, removal, optimizer=optimizer, example_inputs=ex, validate=ex is not None,
                         cuts=cuts)
    except BrokenForward:
        if ex is None:
            raise
        bad = find_breaking_groups(model, graph, removal, ex)
        if not bad:
            raise
        for gid, err in bad.items():
            removal.pop(gid)
            skipped.append({"where": graph.groups[gid].name, "reason": f"changing this group's width breaks the "
                            f"model's forward, so it was left whole ({err[:200]})"})
            log.info("left group %s whole: %s", graph.groups[gid].name, err)
        remove_channels_(model, graph, removal, optimizer=optimizer, example_inputs=ex, validate=True)
    config_changes = _sync_hf_config(model, skipped)
    removed = graph.removed_flat(removal)
    groups = [{"id": pg.id, "name": pg.name, "members": [(m["fqn"], m["dim"]) for m in pg.members],
               "width_before": pg.width, "width_after": pg.width - len(removal.get(index_id.get(pg.id, -1), ()))}
              for pg in plan_.groups]
    approx = [{"group": pg.name, "reason": r} for pg in plan_.groups if pg.channels for r in pg.approximate]
    return Report(op="prune_", params_before=params_before, params_after=count_params(model),
                  macs_before=graph.macs(), macs_after=graph.macs(removed), groups=groups, skipped=skipped,
                  approximate=approx, config_changes=config_changes, trace="fast" if graph.rec.fast else "real",
                  validation=graph.rec.validated or "none", outputs_changed=list(graph.outputs_changed),
                  selection={k: plan_.settings[k] for k in ("criterion", "reduce", "allocation")
                             if k in plan_.settings})


def _sync_hf_config(model, skipped: list) -> dict:
    """A Hugging Face model's config follows its new widths (so save_pretrained/from_pretrained round-trip)."""
    if not is_hf_model(model):
        return {}
    try:
        return sync_config_(model)
    except Exception as e:  # noqa: BLE001 - the pruning itself succeeded; a config we cannot fix is a note
        log.warning("model.config was left as it was: %s; save with prunekit.save, which records shapes", e)
        skipped.append({"where": "model.config", "reason": f"not updated: {e}; save with prunekit.save (it "
                        "records every shape) rather than save_pretrained"})
        return {}
