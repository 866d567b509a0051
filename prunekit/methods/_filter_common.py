"""Shared pieces of the training-time filter methods: update rules, filter scores, gates, validation.

Everything here is a small pure function of tensors (or a thin helper on a module), so the callbacks in
``_regularizers.py`` and the method modules stay short and the rules are unit-tested on their own.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..allocate import allocate_to_target, global_keep_masks, kept_at  # noqa: F401  (global_keep_masks re-exported)
from ..criteria import ChannelView, get_criterion, score_member
from ..criteria.collect import collect
from ..data import first_batches  # noqa: F401  (re-exported for the filter methods)
from ..errors import ConfigError
from ..quantize import kmeans
from .._registry import closest
from ..api import plan_channels, prune_, score_groups
from ..graph import build_graph
from ..recipe import parse_target

log = logging.getLogger(__name__)

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


# ----------------------------------------------------------------------------------------------- update rules
def soft_threshold(x: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """``sign(x) * max(|x| - threshold, 0)``: the proximal operator of ``threshold * |x|``.

    Example:
        >>> soft_threshold(torch.tensor([-0.75, 0.25, 1.5]), 0.5).tolist()
        [-0.25, 0.0, 1.0]
    """
    return torch.sign(x) * torch.clamp(x.abs() - threshold, min=0.0)


def apg_nag_step(
    lam: torch.Tensor, grad: torch.Tensor, velocity: torch.Tensor, *, lr: float, strength: float, momentum: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One accelerated proximal gradient step (NAG form) on non-negative scaling factors ``lam``.

    ``z = prox(lam - lr*grad, lr*strength)``, ``v = z - lam + momentum*v``, ``lam = max(z + momentum*v, 0)``.
    Returns the new ``(lam, velocity)``; a factor whose proximal point and velocity are zero stays exactly 0.

    Example:
        >>> lam, v = apg_nag_step(torch.tensor([1.0, 0.01]), torch.zeros(2), torch.zeros(2),
        ...                       lr=0.1, strength=0.5, momentum=0.9)
        >>> lam.tolist()
        [0.9049999713897705, 0.0]
    """
    z = soft_threshold(lam - lr * grad, lr * strength)
    velocity = z - lam + momentum * velocity
    return torch.clamp(z + momentum * velocity, min=0.0), velocity


def fista_step(m: torch.Tensor, grad: torch.Tensor, z_prev: torch.Tensor, t: float, *, lr: float,
               lam: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One FISTA step on masks ``m``: ``z = soft_threshold(m - lr*grad, lr*lam)``, then the momentum point
    ``m' = z + (t - 1)/t' * (z - z_prev)`` with ``t' = (1 + sqrt(1 + 4 t^2)) / 2``. Returns ``(m', z, t')``;
    start with ``z_prev = m`` and ``t = 1`` (no momentum on the first step).

    Example:
        >>> m = torch.tensor([0.005, 0.5])
        >>> new, z, t = fista_step(m, torch.zeros(2), m.clone(), 1.0, lr=0.01, lam=0.6)
        >>> [round(v, 6) for v in new.tolist()]   # 0.005 is under the threshold lr * lam = 0.006: exactly 0
        [0.0, 0.494]
    """
    z = soft_threshold(m - lr * grad, lr * lam)
    t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
    return z + (t - 1) / t_next * (z - z_prev), z, t_next


def cluster_average_matrix(clusters: Sequence[Sequence[int]], n: int) -> torch.Tensor:
    """``[n, n]`` matrix ``M`` with ``M[i, j] = 1/|C|`` when filters i and j share cluster C, else 0."""
    m = torch.zeros(n, n)
    seen: set[int] = set()
    for c in clusters:
        idx = torch.as_tensor(list(c), dtype=torch.long)
        if len(idx) == 0:
            raise ConfigError("clusters: an empty cluster was given; every cluster needs at least one filter")
        if seen & set(idx.tolist()):
            raise ConfigError(f"clusters: filter(s) {sorted(seen & set(idx.tolist()))} appear in two clusters")
        seen |= set(idx.tolist())
        m[idx.unsqueeze(1), idx.unsqueeze(0)] = 1.0 / len(idx)
    if seen != set(range(n)):
        raise ConfigError(f"clusters: filters {sorted(set(range(n)) - seen)} belong to no cluster; cover all {n}")
    return m


def centripetal_gradient(weight: torch.Tensor, grad: torch.Tensor, avg: torch.Tensor, eps: float) -> torch.Tensor:
    """C-SGD's replacement gradient: cluster-mean loss gradient plus ``eps * (W_i - mean of W over i's cluster)``.

    ``weight``/``grad`` have the filter dim first; ``avg`` is :func:`cluster_average_matrix`. Filters of one
    cluster then receive the same loss gradient and are pulled toward their common mean.
    """
    w = weight.reshape(weight.shape[0], -1)  # [n_filters, rest]
    g = grad.reshape(grad.shape[0], -1)
    avg = avg.to(w)
    return (avg @ g + eps * (w - avg @ w)).reshape(grad.shape)


def kmeans_clusters(weight: torch.Tensor, k: int, *, iters: int = 30, seed: int = 0) -> list[list[int]]:
    """Cluster the filters (dim 0 of ``weight``) into exactly ``k`` non-empty clusters (the one k-means,
    :func:`prunekit.quantize.kmeans`, k-means++ seeding)."""
    _, assign = kmeans(weight.reshape(weight.shape[0], -1), k, init="kmeans++", iters=iters, seed=seed, nonempty=True)
    return [sorted((assign == j).nonzero().flatten().tolist()) for j in range(k)]


# -------------------------------------------------------------------------------------------- filter scores
def filter_norms(weight: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Lp norm of each filter (dim 0); ``[n_filters]``."""
    return weight.detach().reshape(weight.shape[0], -1).norm(p=p, dim=1)


def weight_scores(weight: torch.Tensor, criterion: str = "l2") -> torch.Tensor:
    """One score per filter (dim 0 of ``weight``) from the registered weight criterion ``criterion``.

    The same function ``prunekit.plan``/``prune_`` use (``prunekit.criteria``), applied to one tensor; higher
    means keep. Only criteria that need no calibration data (``l1``, ``l2``, ``fpgm``, ...) score a bare tensor.

    Example:
        >>> weight_scores(torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]]), "fpgm").tolist()
        [6.0, 5.0, 9.0]
    """
    spec = get_criterion(criterion)
    if spec.needs:
        raise ConfigError(f"criterion={criterion!r} needs {list(spec.needs)} from calibration data; a filter "
                          f"score on weights alone takes a weight criterion such as 'l2' or 'fpgm'")
    w = weight.detach().reshape(weight.shape[0], -1)
    view = ChannelView(fqn="", dim=0, role="producer", channels=np.arange(w.shape[0]), weight=w)
    return torch.as_tensor(spec.fn(view)).detach().float().reshape(-1).cpu()


def lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` lowest scores, ties broken by index (stable); ``[k]`` long tensor."""
    if k <= 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.sort(scores.detach().float(), stable=True).indices
    return order[:k].sort().values


# ------------------------------------------------------------------------------------------------ model views
def bn_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(fqn, module)`` of every affine BatchNorm in ``model``, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BN_TYPES) and m.affine]


def conv_bn_pairs(model: nn.Module, example_inputs) -> list[tuple[str, str]]:
    """``(conv_fqn, bn_fqn)`` for every BatchNorm whose input is exactly the output of a Conv2d/Linear.

    Found by recording one forward pass (eval mode, no grad), so the pairing follows the real data flow
    rather than the order in which modules were declared. The model is left unchanged.
    """
    producers = {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    bns = {n for n, m in model.named_modules() if isinstance(m, _BN_TYPES)}
    produced: dict[int, str] = {}
    pairs: list[tuple[str, str]] = []

    def after_producer(name, _args, out):
        if name in producers:
            produced[id(out)] = name

    def before_bn(name, args):
        src = produced.get(id(args[0])) if name in bns else None
        if src is not None:
            pairs.append((src, name))

    collect(model, [(example_inputs, None)], watch=sorted(producers | bns), on_output=after_producer,
            on_input=before_bn)
    return pairs


class ChannelGates:
    """Per-channel multiplicative gates on the outputs of BatchNorm layers, attached by forward hooks.

    The gates are leaf tensors owned by this object (not module parameters), so the model's structure and
    ``state_dict`` keys never change and the user's optimizer never sees them; :meth:`fold_` multiplies them
    into the BN affine parameters (``gamma *= g``, ``beta *= g``) and removes the hooks, after which the plain
    model computes exactly what the gated one did.
    """

    def __init__(self, model: nn.Module, bn_fqns: Iterable[str], init: float = 1.0):
        mods = dict(model.named_modules())
        self.fqns = list(bn_fqns)
        self.gates: dict[str, torch.Tensor] = {}
        self._handles = []
        for fqn in self.fqns:
            bn = mods[fqn]
            g = torch.full((bn.num_features,), float(init), device=bn.weight.device, requires_grad=True)
            self.gates[fqn] = g
            self._handles.append(bn.register_forward_hook(self._hook(g)))
        self._mods = {f: mods[f] for f in self.fqns}

    @staticmethod
    def _hook(g: torch.Tensor):
        def hook(_mod, _inp, out):
            shape = [1, -1] + [1] * (out.dim() - 2)
            return out * g.view(shape)

        return hook

    def zero_grad(self) -> None:
        for g in self.gates.values():
            g.grad = None

    def fold_(self) -> None:
        """Fold the gates into their BN layers and detach the hooks (idempotent)."""
        with torch.no_grad():
            for fqn, g in self.gates.items():
                bn = self._mods[fqn]
                bn.weight.mul_(g.to(bn.weight))
                bn.bias.mul_(g.to(bn.bias))
        self.remove()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


# --------------------------------------------------------------------------------------------- validation

def steps_per_epoch(train_data) -> int:
    """Number of batches in one pass of ``train_data`` (needs ``len``)."""
    try:
        return len(train_data)
    except TypeError:
        raise ConfigError(
            f"train_data={type(train_data).__name__}: this method schedules its steps and needs a sized "
            f"iterable; pass a DataLoader or a list of batches"
        ) from None


# ------------------------------------------------------------------------------------------ method plumbing

def check_choice(name: str, value, choices: Sequence[str]) -> None:
    """``options[name]`` must be one of ``choices``; the error shows the closest valid value."""
    if value not in choices:
        hint = closest(str(value), choices)
        raise ConfigError(f"options[{name!r}]={value!r} is not a valid value"
                          + (f"; did you mean {hint!r}?" if hint else "")
                          + f" Valid values: {', '.join(map(str, choices))}; set e.g. "
                            f"options={{{name!r}: {(hint or choices[0])!r}}}")


def group_scores(model: nn.Module, ctx, criterion: str, batches=None, graph=None,
                 groups: list | None = None) -> dict[str, torch.Tensor]:
    """``{group key: [width] scores}`` of the registered ``criterion`` for every filter group (higher = keep).

    The engine's own scoring path (:func:`prunekit.api.score_groups`, ``reduce="producer"``), so a method ranks
    channels exactly as ``prunekit.plan(criterion=...)`` would; data-driven criteria (``mean-act``, ``apoz``)
    read ``batches`` (``(inputs, targets)`` pairs). A channel's activation statistic is taken where the network
    uses it: the input of the layers that read it (after BatchNorm and ReLU).
    """
    graph = graph if graph is not None else _graph(model, ctx)
    groups = groups if groups is not None else filter_groups(model, ctx, graph)
    per_group = score_groups(model, graph, criterion, calib=batches, reduce="producer", seed=ctx.seed)
    index = {id(g): i for i, g in enumerate(graph.groups)}
    return {g.key: torch.as_tensor(per_group[index[id(g.group)]], dtype=torch.float64) for g in groups}


def require_prune_epochs(ctx, method_id: str) -> None:
    """A training-time method needs ``ctx.prune_epochs >= 1`` (the harness checks data, not this budget)."""
    pe = ctx.prune_epochs
    if isinstance(pe, bool) or not isinstance(pe, int) or pe < 1:
        raise ConfigError(f"prune_epochs={pe!r}: method {method_id!r} is a training-time method and cannot run "
                          f"one-shot; give prune_epochs >= 1 (epochs of training before the cut) or choose a "
                          f"one-shot method")


def reinitialise_(model: nn.Module) -> int:
    """Re-draw every parameter with its module's own initialiser (``reset_parameters``) and reset BatchNorm
    statistics; returns how many modules were reset. Draws from torch's global generator."""
    n = 0
    for m in model.modules():
        if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
            m.reset_parameters()
            n += 1
        elif hasattr(m, "reset_running_stats"):
            m.reset_running_stats()
    return n


def fresh_initialisation(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A state dict of ``model`` re-initialised by its modules' own initialisers under ``seed``; ``model`` and
    torch's global generator are left as they were."""
    import copy

    twin = copy.deepcopy(model)
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        reinitialise_(twin)
    return {k: v.detach().clone() for k, v in twin.state_dict().items()}


# ------------------------------------------------------------------------------- structural engine adapter
@dataclasses.dataclass
class FilterGroup:
    """One prunable channel group seen from the filter methods: who produces its channels.

    ``convs`` are the Conv/Linear modules whose output channels (weight dim 0) are the group's channels,
    ``bns`` the affine BatchNorms on those channels; several convs mean channels tied by a residual add.
    ``key`` (the first producer's FQN) names the group in score and count dicts.
    """

    key: str
    width: int
    convs: list
    bns: list
    group: object = None  # the engine's graph group


def _module_of(param_fqn: str) -> tuple[str, str]:
    mod, _, name = param_fqn.rpartition(".")
    return mod, name


def _ignore_modules(model: nn.Module, ignore) -> dict:
    """``{id(module): fqn}`` for the module FQNs in ``ignore`` (as the engine's ``ignore=`` takes them)."""
    mods = dict(model.named_modules())
    bad = [f for f in ignore or () if f not in mods]
    if bad:
        hint = closest(bad[0], list(mods))
        raise ConfigError(f"ignore={list(ignore)!r}: {bad[0]!r} is not a module of the model"
                          + (f"; did you mean {hint!r}?" if hint else "") + "; give module FQNs such as 'fc'")
    return {id(mods[f]): f for f in ignore or ()}


def _graph(model: nn.Module, ctx):
    return build_graph(model, ctx.example_inputs, ignore_modules=_ignore_modules(model, ctx.ignore) or None)


def filter_groups(model: nn.Module, ctx, graph=None) -> list[FilterGroup]:
    """The engine's channel groups whose channels are the output filters of Conv/Linear layers.

    Only members whose positions are the group's channels one-to-one are used (conv/linear weight dim 0,
    BN weight), so indices can be shared between the method's masks and the engine's plan. Groups touching
    an FQN in ``ctx.ignore`` are left out.
    """
    import numpy as np

    graph = graph if graph is not None else _graph(model, ctx)
    mods = dict(model.named_modules())
    out = []
    for g in graph.groups:
        convs, bns = [], []
        for m in g.members:
            mod_fqn, pname = _module_of(m.fqn)
            mod = mods.get(mod_fqn)
            if pname != "weight" or m.dim != 0 or mod is None:
                continue
            if not np.array_equal(m.channel, np.arange(g.width)):
                continue
            if isinstance(mod, (nn.Conv2d, nn.Linear)) and m.role == "producer":
                convs.append(mod_fqn)
            elif isinstance(mod, _BN_TYPES) and mod.affine:
                bns.append(mod_fqn)
        if not (convs or bns):
            continue
        out.append(FilterGroup(key=(convs or bns)[0], width=g.width, convs=convs, bns=bns, group=g))
    return out


def bn_criterion_scores(model: nn.Module, criterion: str = "bn-scale") -> dict[str, torch.Tensor]:
    """``{bn_fqn: scores}`` of every affine BatchNorm from the registered channel ``criterion``.

    ``"bn-scale"`` (:mod:`prunekit.criteria.bn`) gives ``|gamma|``, so an exact-zero scale scores 0 and is
    cut first by :func:`select_to_target`.

    Example:
        >>> bn = nn.BatchNorm1d(3); bn.weight.data = torch.tensor([0.5, -2.0, 0.0])
        >>> bn_criterion_scores(nn.Sequential(bn))["0"].tolist()
        [0.5, 2.0, 0.0]
    """
    import numpy as np

    spec = get_criterion(criterion)
    out = {}
    for f, bn in bn_layers(model):
        view = ChannelView(f"{f}.weight", 0, "producer", np.arange(bn.num_features),
                           bn.weight.detach().reshape(-1, 1), module=bn, module_fqn=f)
        out[f] = torch.from_numpy(score_member(spec, view))
    return out


def zero_scale_channels(model: nn.Module, ctx) -> int:
    """Channels of the prunable groups whose every affine BatchNorm scale is exactly 0 (channels switched off)."""
    mods = dict(model.named_modules())
    n = 0
    for g in filter_groups(model, ctx):
        if g.bns:
            off = torch.stack([mods[b].weight.detach().cpu() == 0 for b in g.bns]).all(0)
            n += int(off.sum())
    return n


def require_bn(model: nn.Module, method_id: str) -> None:
    if not bn_layers(model):
        raise ConfigError(
            f"model={type(model).__name__}: method {method_id!r} uses BatchNorm scales as channel switches, but the "
            f"model has no affine BatchNorm layer; choose a model with BatchNorm (e.g. vgg-small, resnet20) or a "
            f"method that scores filters by their weights ('sfp', 'l1-filter')"
        )


def select_to_target(model: nn.Module, ctx, scores: dict[str, torch.Tensor], allocation: str,
                     groups: list[FilterGroup] | None = None, min_keep: int = 1, graph=None):
    """Which channels to remove so the model meets ``ctx.target``, from per-channel ``scores`` (lower goes first).

    ``scores`` are keyed by any producer FQN of a group (conv/linear or BN; several keys of one group are
    summed). ``allocation="global"`` removes channels in one ranking over all groups; ``"uniform"`` removes
    the same fraction of every scored group. Costs come from the engine's exact MAC/parameter model.
    Scores ``<= 0`` mark channels that are already off (exact-zero scale, masked, dead): with ``global``
    allocation they are always part of the removal, even beyond the target.
    ``graph`` reuses an engine graph traced earlier (the structure must not have changed since).
    Returns ``(removal, info)`` with ``removal = {group key: sorted indices}``.
    """
    import numpy as np

    kind, value = parse_target(ctx.target)
    graph = graph if graph is not None else _graph(model, ctx)
    groups = groups if groups is not None else filter_groups(model, ctx, graph)
    by_fqn = {f: g for g in groups for f in (*g.convs, *g.bns)}
    summed: dict[str, np.ndarray] = {}
    for f, s in scores.items():
        if f not in by_fqn:
            raise ConfigError(f"scores for {f!r}: not a prunable producer of this model; prunable: "
                              f"{sorted(by_fqn)[:20]}")
        g = by_fqn[f]
        arr = torch.as_tensor(s).detach().double().cpu().numpy()
        summed[g.key] = summed.get(g.key, 0) + arr
    scored = [g for g in groups if g.key in summed]
    cost = graph.macs if kind == "macs" else graph.params
    dense = cost()
    budget = value * dense
    gid = {g.key: g.group.id for g in scored}
    widths = [g.width for g in scored]
    group_scores = [summed[g.key] for g in scored]

    def removed_mask(sel: dict[str, np.ndarray]) -> np.ndarray:
        return graph.removed_flat({gid[k]: v for k, v in sel.items() if len(v)})

    def selection(kept: list) -> dict[str, np.ndarray]:  # each group's lowest scores beyond its kept width
        return {g.key: np.sort(np.argsort(sc, kind="stable")[:g.width - k]).astype(np.int64)
                for g, sc, k in zip(scored, group_scores, kept)}

    check_choice("allocation", allocation, ("global", "uniform"))
    # global: one ranking of the raw scores, a group at min_keep leaving it; scores <= 0 mark channels already
    # off (exact-zero scale, masked, dead), always part of the removal even beyond the target
    forced = ([min(int((sc <= 0).sum()), w - min_keep) for sc, w in zip(group_scores, widths)]
              if allocation == "global" else None)
    # a global cut stays the shortest prefix of the ranking that meets the target (methods that mask channels
    # before the cut, e.g. gate-decorator's ticks, mask that prefix); a uniform cut is filled to the budget
    how = dict(allocation=allocation, min_channels=min_keep, normalise_by=None, room=True, forced=forced)
    emptied = kept_at(widths, group_scores, 1.0, **{k: v for k, v in how.items() if k != "forced"})
    if cost(removed_mask(selection(emptied))) > budget:
        raise ConfigError(_unreachable(ctx.target, cost(removed_mask(selection(emptied))) / dense, kind))
    kept, _ = allocate_to_target(widths, group_scores, lambda k: cost(removed_mask(selection(k))), budget,
                                 hi=1.0, fill=allocation == "uniform", **how)
    sel = selection(kept)
    sel = {k: v for k, v in sel.items() if len(v)}
    after = cost(removed_mask(sel))
    info = {"target": ctx.target, "allocation": allocation, f"dense_{kind}": int(dense), f"pruned_{kind}": int(after),
            f"kept_{kind}_fraction": after / dense, "removed_channels": int(sum(len(v) for v in sel.values()))}
    return sel, info


def _unreachable(target: str, best: float, kind: str) -> str:
    return (f"target={target!r} cannot be reached without emptying a layer: removing all but one channel of every "
            f"prunable group still keeps {best:.3f} of the {kind}; ask for a larger fraction (e.g. "
            f"target='{kind}={min(0.99, math.ceil(best * 100) / 100 + 0.05):.2f}') or prune fewer layers via ignore")


def removal_counts(model: nn.Module, ctx, scores: dict[str, torch.Tensor], allocation: str) -> dict[str, int]:
    """``{group key: number of channels}`` the cut at ``ctx.target`` would remove with this allocation."""
    sel, _ = select_to_target(model, ctx, scores, allocation)
    return {k: len(v) for k, v in sel.items()}


def removal_cost(graph, groups, removal: dict, kind: str) -> int:
    """Exact MACs (``kind="macs"``) or parameters of ``graph``'s model after removing ``removal`` (``{filter
    group key: channel indices}`` over ``groups``), from the engine's cost terms, without touching the model:
    what a method checks while its mechanism switches channels off (e.g. to stop at the target)."""
    gid = {g.key: g.group.id for g in groups}
    removed = graph.removed_flat({gid[k]: v for k, v in removal.items() if len(v)})
    return graph.macs(removed) if kind == "macs" else graph.params(removed)


def cut_to_target(model: nn.Module, ctx, scores: dict[str, torch.Tensor], allocation: str = "global") -> dict:
    """Remove the lowest-scoring channels until ``ctx.target`` is met, through the structural engine.

    The selection is :func:`select_to_target`; it becomes a plan through the public verb
    :func:`prunekit.plan_channels` (which checks every index against the engine's groups) and is applied by
    :func:`prunekit.prune_`: transactional surgery of every coupled tensor, one validation forward, the model
    restored if anything fails. Returns a JSON-ready summary (target, allocation, costs before/after, kept
    widths, the engine report).
    """
    graph = _graph(model, ctx)
    groups = filter_groups(model, ctx, graph)
    sel, info = select_to_target(model, ctx, scores, allocation, groups, graph=graph)
    params_before = sum(p.numel() for p in model.parameters())
    chosen = {k: [int(i) for i in v] for k, v in sel.items() if len(v)}
    plan = plan_channels(model, ctx.example_inputs, chosen, ignore=list(ctx.ignore))
    info["engine_report"] = prune_(model, plan).to_dict()
    widths = {g.key: g.width - len(sel.get(g.key, ())) for g in groups}
    info.update({"params_before": int(params_before), "params_after": int(sum(p.numel() for p in model.parameters())),
                 "widths": widths})
    return info


def merge_clusters_(model: nn.Module, ctx, groups: list[FilterGroup], clusters: dict) -> dict[str, torch.Tensor]:
    """C-SGD's merge: each cluster's first channel becomes the cluster mean, its readers absorb the others.

    For every member of a clustered group, producer-side tensors (weights, biases, BatchNorm affine and
    running statistics) take the mean over the cluster at the kept channel, and consumer tensors (the input
    slices of the next layers) add the other members' slices into the kept one. When the cluster's channels
    are identical this leaves the function unchanged once the other channels are cut. Returns scores for
    :func:`cut_to_target`: 1 for kept channels, 0 for the merged-away ones.
    """
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    scores = {}
    with torch.no_grad():
        for g in groups:
            if g.key not in clusters:
                continue
            s = torch.zeros(g.width)
            for cluster in clusters[g.key]:
                keep, others = cluster[0], list(cluster[1:])
                s[keep] = 1.0
                if not others:
                    continue
                for m in g.group.members:
                    t = tensors.get(m.fqn)
                    if t is None or t.dim() == 0:
                        continue
                    def at(c, t=t, m=m):  # index tensors on the parameter's device (index_select needs it)
                        return torch.as_tensor(m.positions([c]), dtype=torch.long, device=t.device)

                    k = at(keep)
                    if m.role == "consumer":
                        for o in others:
                            t.index_add_(m.dim, k, t.index_select(m.dim, at(o)))
                    else:
                        rows = [t.index_select(m.dim, at(c)) for c in cluster]
                        t.index_copy_(m.dim, k, torch.stack(rows).float().mean(0).to(t.dtype))
            scores[g.key] = s
    return scores


def select_lowest_global(scores: dict[str, torch.Tensor], keep: dict[str, torch.Tensor], n: int,
                         min_keep: float) -> int:
    """Mask (in ``keep``) the ``n`` lowest-scoring unmasked channels over all groups; returns how many were masked.

    A group never drops below ``ceil(min_keep * width)`` channels (and at least one). Ties break by
    group key, then channel index, so the selection is deterministic (Gate Decorator, DropNet).
    """
    cand = []
    for key, s in scores.items():
        s = s.detach().cpu()  # scores may come from a GPU model; the masks live on the CPU
        floor = max(1, math.ceil(min_keep * len(s)))
        room = int(keep[key].sum()) - floor
        if room <= 0:
            continue
        alive = keep[key].nonzero().flatten()
        order = alive[torch.sort(s[alive], stable=True).indices][:room]
        cand += [(float(s[i]), key, int(i)) for i in order]
    cand.sort(key=lambda t: (t[0], t[1], t[2]))
    for _, key, i in cand[:n]:
        keep[key][i] = False
    return min(n, len(cand))
