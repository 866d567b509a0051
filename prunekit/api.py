"""The structural-pruning verbs: ``plan`` (changes nothing), ``prune_`` (in place), ``inspect``.

Example:
    >>> import torch, prunekit as pk
    >>> from prunekit.testing import models
    >>> model, x = models()["chain"]()
    >>> p = pk.plan(model, x, sparsity=0.5)
    >>> report = pk.prune_(model, p, example_inputs=x)
    >>> report.params_after == p.predicted["params_after"]
    True
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import numbers
import re
import weakref
from typing import Any

import numpy as np
import torch
from torch import nn

from ._checks import checked
from ._registry import closest
from .allocate import allocate_to_target, check_allocation, kept_at, parse_target, select_removal
from .criteria import ChannelView, ConsumerView, channel_rows, get_criterion, reduce_scores, score_member
from .errors import ConfigError, PruneError, PrunekitError
from .graph import Graph, build_graph
from .graph.trace import MadeUpValue, _walk_outputs, call_model, model_device, move_to

__all__ = ["plan", "prune_", "inspect", "Plan", "PlanGroup", "Report", "Inspection", "count_params"]

log = logging.getLogger(__name__)
_PLAN_VERSION = 1


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- plan data --------------------------------------------------------------------------------------
@dataclasses.dataclass
class PlanGroup:
    id: int
    name: str
    width: int  # channels before
    kept: int  # channels after
    channels: list  # group channel indices removed
    members: list  # [{"fqn", "dim", "size", "indices"}]
    approximate: list = dataclasses.field(default_factory=list)

    @property
    def removed(self) -> int:
        return self.width - self.kept


@dataclasses.dataclass
class Plan:
    """What ``prune_`` will remove: per group, every member ``(fqn, dim)`` and the exact ``indices``."""

    groups: list
    predicted: dict  # params_before, params_after, macs_before, macs_after
    settings: dict
    shapes: dict  # fqn -> shape of every parameter/buffer the plan touches, at planning time
    skipped: list = dataclasses.field(default_factory=list)  # [{"where", "reason"}]
    version: int = _PLAN_VERSION
    _graph: Any = dataclasses.field(default=None, repr=False, compare=False)
    _model: Any = dataclasses.field(default=None, repr=False, compare=False)
    _example_inputs: Any = dataclasses.field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {"version": self.version, "settings": self.settings, "predicted": self.predicted,
                "shapes": {k: list(v) for k, v in self.shapes.items()},
                "groups": [dataclasses.asdict(g) for g in self.groups], "skipped": self.skipped}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        d = json.loads(text)
        if d.get("version") != _PLAN_VERSION:
            raise ConfigError(f"plan version {d.get('version')!r} is not supported (expected {_PLAN_VERSION}); "
                              f"re-create the plan with this prunekit version")
        return cls(groups=[PlanGroup(**g) for g in d["groups"]], predicted=d["predicted"], settings=d["settings"],
                   shapes={k: tuple(v) for k, v in d["shapes"].items()}, skipped=d.get("skipped", []))

    def __str__(self) -> str:
        p = self.predicted
        rows = [(str(g.id), g.name, f"{g.width}->{g.kept}", str(len(g.members)),
                 ("~ " if g.approximate else "") + _short_members(g.members)) for g in self.groups if g.removed]
        head = (f"Plan: {len(self.groups)} groups, {sum(1 for g in self.groups if g.removed)} pruned; params "
                f"{p['params_before']:,} -> {p['params_after']:,}, MACs {p['macs_before']:,} -> "
                f"{p['macs_after']:,}")
        st = self.settings
        if st.get("criterion"):
            head += (f"\ncriterion {st['criterion']} (reduce={st.get('reduce', 'group')}), allocation "
                     f"{st.get('allocation', 'global' if st.get('global_') else 'uniform')}")
        return head + "\n" + _table(("group", "name", "width", "members", "coupled (~ approximate)"), rows)


def _short_members(members, n=4) -> str:
    s = ", ".join(f"{m['fqn']}[{m['dim']}]" for m in members[:n])
    return s + (f", +{len(members) - n}" if len(members) > n else "")


def _table(header, rows) -> str:
    rows = [tuple(header)] + [tuple(r) for r in rows]
    w = [min(max(len(r[i]) for r in rows), 80) for i in range(len(header))]
    lines = ["  ".join(c[:80].ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * x for x in w))
    return "\n".join(lines)


@dataclasses.dataclass
class Report:
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    groups: list  # [{"id", "name", "members", "width_before", "width_after"}]
    skipped: list  # [{"where", "reason"}]
    approximate: list = dataclasses.field(default_factory=list)  # [{"group", "reason"}]
    config_changes: dict = dataclasses.field(default_factory=dict)  # Hugging Face config: {field: [old, new]}
    # "fast": planned on a trace without weight arithmetic, which the pruned model's forward confirmed;
    # "real": traced with real values (calibration data, a given plan, or a fast trace not confirmed)
    trace: str = "real"
    # how the pruned model's validation forward ran: "fast" (without weight arithmetic, with the fast trace's
    # value checks), "real", or "none" (no example inputs)
    validation: str = "real"
    # how the channels were chosen: {"criterion", "reduce", "allocation"} of the plan ({} for plan_channels)
    selection: dict = dataclasses.field(default_factory=dict)
    # what the trace could not vouch for, e.g. data-dependent control flow (the plan covers the traced path)
    notes: list = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        pr = self.params_after / max(self.params_before, 1)
        mr = self.macs_after / max(self.macs_before, 1)
        rows = [(str(g["id"]), g["name"], str(g["width_before"]), str(g["width_after"]))
                for g in self.groups if g["width_after"] != g["width_before"]]
        s = (f"Pruned: params {self.params_before:,} -> {self.params_after:,} ({pr:.1%} kept), MACs "
             f"{self.macs_before:,} -> {self.macs_after:,} ({mr:.1%} kept)\n")
        s += _table(("group", "name", "before", "after"), rows)
        if self.selection:
            s += "\nselected by " + ", ".join(f"{k}={v}" for k, v in self.selection.items())
        if self.skipped:
            s += f"\n{len(self.skipped)} dims not prunable (see .skipped)"
        if self.config_changes:
            s += "\nmodel.config updated: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in self.config_changes.items())
        if self.trace == "fast":
            how = "without weight arithmetic" if self.validation == "fast" else "with real values"
            s += f"\ntraced without weight arithmetic; a forward of the pruned model {how} issued the same ops"
        for note in self.notes:
            s += f"\nnote: {note}"
        return s


@dataclasses.dataclass
class Inspection:
    groups: list
    nonprunable: list
    params: int
    macs: int

    def __str__(self):
        rows = [(str(g.id), g.name, str(g.width), str(len(g.members)),
                 ("~ " if g.approximate else "") + ", ".join(f"{m.fqn}[{m.dim}]" for m in g.members[:4]) +
                 (f", +{len(g.members) - 4}" if len(g.members) > 4 else "")) for g in self.groups]
        s = f"{len(self.groups)} prunable groups, params {self.params:,}, MACs {self.macs:,}\n"
        s += _table(("group", "name", "width", "members", "coupled layers (~ approximate)"), rows)
        np_rows = [(n.fqn, str(n.dim), str(n.size), n.reason) for n in self.nonprunable if
                   "kernel" not in n.reason]
        if np_rows:
            s += "\n\nNot prunable:\n" + _table(("fqn", "dim", "size", "reason"), np_rows)
        return s


# ---- argument checks ----------------------------------------------------------------------------------
def _module_fqns(model, items, argument: str) -> dict:
    """FQN strings ('re:' regexes) or module objects -> {id(module): fqn}; unmatched patterns are errors."""
    if isinstance(items, (str, nn.Module)):
        items = [items]
    named = dict(model.named_modules())
    by_id = {id(m): n for n, m in named.items()}
    out: dict = {}
    problems = []
    for it in items:
        if isinstance(it, nn.Module):
            if id(it) not in by_id:
                problems.append(f"{argument}: module {type(it).__name__} is not part of the model")
            else:
                out[id(it)] = by_id[id(it)]
            continue
        if not isinstance(it, str):
            problems.append(f"{argument}: {it!r} is neither an FQN string nor a module")
            continue
        if it.startswith("re:"):
            try:
                rx = re.compile(it[3:])
            except re.error as e:
                problems.append(f"{argument}: bad regex {it!r}: {e}")
                continue
            hits = [n for n in named if n and rx.fullmatch(n)]
        else:
            hits = [it] if it in named and it else []
        if not hits:
            hint = closest(it[3:] if it.startswith("re:") else it, [n for n in named if n])
            problems.append(f"{argument}: {it!r} matches no module" + (f"; did you mean {hint!r}?" if hint else "") +
                            " Use a module FQN from model.named_modules() or 're:<regex>'")
        for n in hits:
            out[id(named[n])] = n
    if problems:
        raise ConfigError("; ".join(problems))
    return out


def _check_sparsity(v, argument="sparsity"):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 <= float(v) < 1 or math.isnan(v):
        return (f"{argument}={v!r} must be a float in [0, 1) (the fraction of channels removed), "
                f"e.g. {argument}=0.5")
    return None


def _check_device(model, example_inputs):
    p = next(iter(model.parameters()), None)
    if p is None:
        return
    bad = []
    _walk_outputs(example_inputs, lambda t: bad.append(t.device) if t.device != p.device else None)
    if bad:
        raise ConfigError(f"example_inputs are on {bad[0]} but the model is on {p.device}; move them with "
                          f".to({str(p.device)!r})")


def _validate(sparsity, target, criterion, global_, round_to, min_channels, reduce, per_layer):
    problems = []
    if sparsity is not None and target is not None:
        problems.append(f"give either sparsity= or target=, not both (got sparsity={sparsity!r}, target={target!r})")
    if sparsity is None and target is None and not per_layer:
        problems.append("say how much to prune: sparsity=<fraction removed>, target='macs=<fraction kept>' or "
                        "per_layer={fqn: sparsity}")
    if sparsity is not None:
        e = _check_sparsity(sparsity)
        if e:
            problems.append(e)
    if target is not None:
        try:
            parse_target(target)
        except ConfigError as e:
            problems.append(str(e))
    try:
        get_criterion(criterion)
    except ConfigError as e:
        problems.append(str(e))
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        problems.append(f"round_to={round_to!r} must be an int >= 1 (kept widths become multiples of it)")
    if isinstance(min_channels, bool) or not isinstance(min_channels, int) or min_channels < 0:
        problems.append(f"min_channels={min_channels!r} must be an int >= 0")
    if reduce is not None and reduce not in ("group", "producer"):
        hint = closest(str(reduce), ["group", "producer"])
        problems.append(f"reduce={reduce!r} is not valid" + (f"; did you mean {hint!r}?" if hint else "") +
                        "; choose 'group' or 'producer'")
    if global_ is not None and not isinstance(global_, bool):
        problems.append(f"global_={global_!r} must be True or False (deprecated: use allocation='global')")
    for k, v in (per_layer or {}).items():
        e = _check_sparsity(v, f"per_layer[{k!r}]")
        if e:
            problems.append(e)
    if problems:
        raise ConfigError("; ".join(problems))


# ---- scoring ---------------------------------------------------------------------------------------------
def _module_of(fqn: str) -> str:
    return fqn.rpartition(".")[0]


def _default_loss(outputs, targets):
    logits = outputs
    if not isinstance(logits, torch.Tensor):
        logits = getattr(outputs, "logits", None)
        if logits is None and isinstance(outputs, (tuple, list)):
            logits = outputs[0]
    if targets is None:
        return logits.float().pow(2).mean()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _collect(model, graph: Graph, calib, loss_fn, need_grads: bool, need_acts: bool, per_batch: bool = False):
    """Run ``calib`` once: summed grads per parameter fqn, producer outputs and module inputs; with
    ``per_batch`` also each batch's grads (``grads["<fqn>#batches"]``, a list; memory: batches x model)."""
    grads: dict = {}
    acts: dict = {}
    inputs: dict = {}
    if calib is None:
        raise ConfigError("this criterion needs calibration data: pass calib=[(inputs, targets), ...]")
    named = dict(model.named_modules())
    hooks = []
    if need_acts:
        owners = {_module_of(m.fqn) for g in graph.groups for m in g.members}
        for mf in owners:
            mod = named.get(mf)
            if mod is None:
                continue

            def hook(mod, args, out, mf=mf):  # statistics live on the CPU, where every criterion scores
                if isinstance(out, torch.Tensor):
                    acts.setdefault(mf, []).append(out.detach().cpu())
                t = next((a for a in args if isinstance(a, torch.Tensor)), None)
                if t is not None:
                    inputs.setdefault(mf, []).append(t.detach().cpu())

            hooks.append(mod.register_forward_hook(hook))
    saved = {id(p): p.grad for p in model.parameters()}
    params = dict(model.named_parameters())
    device = model_device(model)
    training = {m: m.training for m in model.modules()}
    model.eval()
    loss_fn = loss_fn or _default_loss
    try:
        for batch in calib:
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise ConfigError(f"calib must yield (inputs, targets) pairs, got {type(batch).__name__}")
            x, y = move_to(batch, device)  # calibration batches may sit on the CPU next to a GPU model
            if need_grads:
                for p in params.values():
                    p.grad = None
                with torch.enable_grad():
                    loss = loss_fn(call_model(model, x), y)
                    loss.backward()
                for f, p in params.items():
                    if p.grad is not None:
                        g = p.grad.detach().cpu()
                        grads[f] = grads[f] + g if f in grads else g.clone()
                        if per_batch:
                            grads.setdefault(f + "#batches", []).append(g.clone())
            else:
                with torch.no_grad():
                    call_model(model, x)
    finally:
        for h in hooks:
            h.remove()
        for p in model.parameters():
            p.grad = saved.get(id(p))
        for m, t in training.items():
            m.training = t
    return grads, acts, inputs


def _channel_first(out: torch.Tensor, module) -> torch.Tensor:
    """Output of a producing module as ``[channels, samples*positions]``: linear layers put features last,
    convolutions and norms at dim 1."""
    last = isinstance(module, (nn.Linear, nn.Embedding)) or type(module).__name__ == "Conv1D" or out.dim() < 3
    d = out.dim() - 1 if last else 1
    return out.movedim(d, 0).reshape(out.shape[d], -1)


def score_groups(model, graph: Graph, criterion: str, *, calib=None, loss_fn=None, reduce="group", seed=0,
                 scorer=None):
    """One score per channel of every group (list aligned with ``graph.groups``).

    ``scorer``: a function ``view -> scores`` used instead of the criterion's registered one (with the
    criterion's needs), e.g. :func:`prunekit.criteria.nisp.scorer` of whole-network scores."""
    spec = get_criterion(criterion)
    if scorer is not None:
        spec = dataclasses.replace(spec, fn=scorer, fast=None)
    per_batch = "batch_grads" in spec.needs
    need_grads = "grads" in spec.needs or per_batch
    need_acts = "activations" in spec.needs
    grads, acts, inputs = ({}, {}, {})
    if need_grads or need_acts:
        grads, acts, inputs = _collect(model, graph, calib, loss_fn, need_grads, need_acts, per_batch)
    named = dict(model.named_modules())
    tensors = graph.rec.tensors
    param_ids = {id(p) for p in model.parameters()}

    def collect_inputs(mf):
        return inputs.get(mf, [])

    out = []
    if spec.fast is not None and not (need_grads or need_acts):
        for g in graph.groups:
            members = [m for m in g.members if id(tensors[m.fqn]) in param_ids] or g.members
            scored = []
            for m in members:
                chans, s = spec.fast(tensors[m.fqn], m.dim, m.channel, {"fqn": m.fqn, "seed": seed})
                scored.append((m, chans, np.asarray(s, dtype=np.float64)))
            out.append(reduce_scores(g.width, scored, reduce))
        return out
    hosted: dict = {}

    def host(fqn):  # data-driven criteria score on the CPU, next to the statistics
        if fqn not in hosted:
            hosted[fqn] = tensors[fqn].detach().cpu()
        return hosted[fqn]

    for g in graph.groups:
        members = [m for m in g.members if id(tensors[m.fqn]) in param_ids]
        consumers = []
        for m in members:
            if m.role == "consumer":
                _, rows = channel_rows(host(m.fqn), m.dim, m.channel)
                mf = _module_of(m.fqn)
                consumers.append(ConsumerView(m.fqn, mf, named.get(mf), m.dim, rows))
        scored = []
        for m in members or g.members:
            t = host(m.fqn)
            chans, rows = channel_rows(t, m.dim, m.channel)
            gr = grb = None
            if m.fqn in grads:
                _, gr = channel_rows(grads[m.fqn], m.dim, m.channel)
            if m.fqn + "#batches" in grads:
                grb = [channel_rows(b, m.dim, m.channel)[1] for b in grads[m.fqn + "#batches"]]
            mf = _module_of(m.fqn)
            act = None
            if m.role == "producer" and mf in acts:
                a = torch.cat([_channel_first(x, named.get(mf)) for x in acts[mf]], 1)
                if a.shape[0] == m.size:
                    _, act = channel_rows(a, 0, m.channel)
            view = ChannelView(m.fqn, m.dim, m.role, chans, rows, gr, act, named.get(mf), mf, g, consumers,
                               collect_inputs, seed, grb)
            scored.append((m, chans, score_member(spec, view)))
        out.append(reduce_scores(g.width, scored, reduce))
    return out


# ---- the verbs ---------------------------------------------------------------------------------------------
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
         seed: int = 0, trace: str = "auto", global_: bool | None = None) -> Plan:
    """Decide which channels to remove; changes nothing.

    ``criterion`` scores channels (default ``"l2"``); ``reduce`` says whose weights score a coupled channel:
    ``"producer"`` (the layers whose outputs the channels are; the papers' definition of ``l1``/``l2``/``fpgm``
    and their default) or ``"group"`` (the mean over every coupled member, the default of the other
    criteria). ``allocation``: ``"uniform"`` (the same fraction from every layer) or ``"global"`` (one ranking
    of mean-normalised scores over all layers); ``per_layer={fqn or 're:regex': sparsity}`` overrides single
    layers. With ``target="macs=<fraction kept>"`` (or ``params=``) the plan lands within the budget and as
    close to it as single channels (``round_to`` units) allow. ``global_=True`` is the deprecated spelling
    of ``allocation="global"``.

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
                 reduce=reduce, per_layer=per_layer, seed=seed, trace=trace, global_=global_)


def _plan(model: nn.Module, example_inputs, *, sparsity=None, target=None, criterion="l2", calib=None, ignore=(),
          allocation="uniform", round_to=1, min_channels=1, loss_fn=None, reduce=None, per_layer=None, seed=0,
          trace="auto", global_=None, confirmed_at_once: bool = False) -> Plan:
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
    graph = _plan_graph(model, example_inputs, ignore_modules, fast=trace == "auto" and calib is None,
                        confirmed_at_once=confirmed_at_once)
    scorer = _whole_network_scorer(criterion, model, example_inputs, calib, ignore)
    scores = score_groups(model, graph, criterion, calib=calib, loss_fn=loss_fn, reduce=reduce, seed=seed,
                          scorer=scorer)
    segs = _segments(graph)
    overrides = _match_segments(segs, per_layer) if per_layer else {}
    widths = [len(c) for _, c, _ in segs]
    seg_scores = [scores[gid][chans] for gid, chans, _ in segs]
    how = dict(allocation=allocation, round_to=round_to, min_channels=min_channels, fixed=overrides)

    def removal_of(kept: list) -> dict:
        removal: dict = {}
        for i, idx in select_removal(seg_scores, kept).items():
            gid, chans, _ = segs[i]
            removal.setdefault(gid, []).append(chans[idx])
        return {g: np.sort(np.concatenate(v)) for g, v in removal.items()}

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
                "reduce": reduce, "per_layer": per_layer, "ignore": sorted(ignore_modules.values()), "seed": seed}
    return _make_plan(model, graph, removal, settings, example_inputs)


# criteria whose papers define the score on the producing filters alone (Li et al. 2017: a filter's own |W|;
# He et al. 2019: distances between the filters of one layer): their default reduction is "producer"
PRODUCER_CRITERIA = ("l1", "l2", "fpgm")


def default_reduce(criterion: str) -> str:
    """The reduction ``plan`` uses when none is given: ``"producer"`` for :data:`PRODUCER_CRITERIA`, else
    ``"group"``."""
    return "producer" if criterion in PRODUCER_CRITERIA else "group"


def _resolve_allocation_reduce(allocation, global_, reduce, criterion) -> tuple:
    """``(allocation, reduce)`` after the deprecated ``global_`` and the criterion's default reduction."""
    if global_ is not None:
        import warnings

        warnings.warn("plan(global_=...) is deprecated; use allocation='global' or allocation='uniform'",
                      DeprecationWarning, stacklevel=3)
        if global_ and allocation not in ("uniform", "global"):
            raise ConfigError(f"global_=True contradicts allocation={allocation!r}; pass allocation only")
        allocation = "global" if global_ else allocation
    problem = check_allocation(allocation)
    if problem:
        raise ConfigError(problem)
    return allocation, default_reduce(criterion) if reduce is None else reduce


def _whole_network_scorer(criterion: str, model, example_inputs, calib, ignore):
    """``nisp`` scores every channel from one backward propagation through the whole network: the scores of
    the caller's :func:`~prunekit.criteria.nisp.nisp_context` (which carries its options), else computed here
    from ``calib``; returned as the per-member score function :func:`score_groups` uses (None: the
    criterion's own function)."""
    from .criteria import nisp

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


def plan_channels(model: nn.Module, example_inputs, channels: dict, *, ignore=()) -> Plan:
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
    graph = build_graph(model, example_inputs, ignore_modules=ignore_modules)
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
                "ignore": sorted(ignore_modules.values())}
    return _make_plan(model, graph, removal, settings, example_inputs)


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
    return build_graph(model, example_inputs, ignore_modules=ignore), example_inputs


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


TRACES = ("auto", "real")


class TraceNotConfirmed(PruneError):
    """The pruned model's forward did not issue the ops of the fast trace a plan was made on (the model was
    restored); a trace with real values decides."""


class BrokenForward(PruneError):
    """The pruned model's validation forward failed (the model was restored)."""


# surgery names the step that failed in ``PruneError.op``; these two steps get their own types here, so that
# the callers below decide by type. (The lead moves the classes to prunekit.errors and the raises into surgery.)
_SURGERY_ERRORS = {"trace check": TraceNotConfirmed, "validation forward": BrokenForward}


def _remove_channels(model, graph, removal, **kwargs):
    """:func:`prunekit.surgery.remove_channels_`, its trace-check and validation failures typed."""
    from .surgery import remove_channels_

    try:
        return remove_channels_(model, graph, removal, **kwargs)
    except PruneError as e:
        kind = _SURGERY_ERRORS.get(e.op)
        if kind is None or type(e) is not PruneError:
            raise
        typed = kind.__new__(kind)
        Exception.__init__(typed, *e.args)
        typed.fqn, typed.op = e.fqn, e.op
        raise typed.with_traceback(e.__traceback__) from e


def _plan_graph(model, example_inputs, ignore_modules: dict, fast: bool, confirmed_at_once: bool) -> Graph:
    """The graph a plan is made on: a fast trace when allowed, and a real one when a made-up value could
    have steered the fast trace's forward. A plan that leaves prune_ is confirmed only when it is applied,
    so for it a tensor of unknown origin (which the fast checks cannot follow) means a real trace too;
    ``confirmed_at_once``: prune_ applies the plan right away and confirms the trace on the pruned model."""
    if fast:
        try:
            graph = build_graph(model, example_inputs, ignore_modules=ignore_modules, fast=True)
            if not graph.rec.unaccounted or confirmed_at_once:
                return graph
            log.debug("fast trace not used (%s); tracing with real values", graph.rec.unaccounted[0])
        except MadeUpValue as e:
            log.debug("fast trace not used (%s); tracing with real values", e)
    return build_graph(model, example_inputs, ignore_modules=ignore_modules)


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
    from .surgery import find_breaking_groups

    skipped = list(plan_.skipped)
    cuts = None
    if own_plan:  # a plan no caller could edit: its member indices are exactly the removal's positions
        cuts = {}
        for pg in plan_.groups:
            for m in pg.members:
                if m["indices"]:
                    cuts.setdefault(m["fqn"], {})[m["dim"]] = m["indices"]
    try:
        _remove_channels(model, graph, removal, optimizer=optimizer, example_inputs=ex, validate=ex is not None,
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
        _remove_channels(model, graph, removal, optimizer=optimizer, example_inputs=ex, validate=True)
    config_changes = _sync_hf_config(model, skipped)
    removed = graph.removed_flat(removal)
    groups = [{"id": pg.id, "name": pg.name, "members": [(m["fqn"], m["dim"]) for m in pg.members],
               "width_before": pg.width, "width_after": pg.width - len(removal.get(index_id.get(pg.id, -1), ()))}
              for pg in plan_.groups]
    approx = [{"group": pg.name, "reason": r} for pg in plan_.groups if pg.channels for r in pg.approximate]
    return Report(params_before, count_params(model), graph.macs(), graph.macs(removed), groups, skipped, approx,
                  config_changes, trace="fast" if graph.rec.fast else "real",
                  validation=graph.rec.validated or "none",
                  selection={k: plan_.settings[k] for k in ("criterion", "reduce", "allocation")
                             if k in plan_.settings})


def _sync_hf_config(model, skipped: list) -> dict:
    """A Hugging Face model's config follows its new widths (so save_pretrained/from_pretrained round-trip)."""
    from .surgery.hf_config import is_hf_model, sync_config_

    if not is_hf_model(model):
        return {}
    try:
        return sync_config_(model)
    except Exception as e:  # noqa: BLE001 - the pruning itself succeeded; a config we cannot fix is a note
        log.warning("model.config was left as it was: %s; save with prunekit.save, which records shapes", e)
        skipped.append({"where": "model.config", "reason": f"not updated: {e}; save with prunekit.save (it "
                        "records every shape) rather than save_pretrained"})
        return {}


def inspect(model: nn.Module, example_inputs, *, ignore=()) -> Inspection:
    """The model's prunable groups (width, coupled layers) and its non-prunable dims with reasons.

    Example:
        >>> import prunekit as pk
        >>> from prunekit.testing import models
        >>> model, x = models()["chain"]()
        >>> len(pk.inspect(model, x).groups)
        2
    """
    ignore_modules = _module_fqns(model, ignore, "ignore") if ignore else {}
    _check_device(model, example_inputs)
    graph = build_graph(model, example_inputs, ignore_modules=ignore_modules)
    return Inspection(graph.groups, graph.nonprunable, graph.params(), graph.macs())
