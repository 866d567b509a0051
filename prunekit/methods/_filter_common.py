"""Shared pieces of the training-time filter methods: update rules, filter scores, gates, validation.

Everything here is a small pure function of tensors (or a thin helper on a module), so the callbacks in
``_regularizers.py`` and the method modules stay short and the rules are unit-tested on their own.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Iterable, Sequence

import torch
from torch import nn

from ..errors import ConfigError

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
    """Cluster the filters (dim 0 of ``weight``) into exactly ``k`` non-empty clusters with k-means (k-means++)."""
    x = weight.detach().reshape(weight.shape[0], -1).float().cpu()  # [n_filters, rest]; clustered on the CPU
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ConfigError(f"k={k} clusters for {n} filters; choose 1 <= k <= {n}")
    gen = torch.Generator().manual_seed(seed)
    centers = [x[torch.randint(n, (1,), generator=gen)].squeeze(0)]
    for _ in range(1, k):  # k-means++ seeding
        d = torch.cdist(x, torch.stack(centers)).min(dim=1).values ** 2
        if float(d.sum()) <= 0:
            centers.append(x[len(centers)])
            continue
        centers.append(x[torch.multinomial(d / d.sum(), 1, generator=gen)].squeeze(0))
    c = torch.stack(centers)
    assign = torch.cdist(x, c).argmin(dim=1)
    for _ in range(iters):
        for j in range(k):
            members = assign == j
            if members.any():
                c[j] = x[members].mean(dim=0)
        assign = torch.cdist(x, c).argmin(dim=1)
    # repair empty clusters: move the farthest point of the largest cluster into each empty one
    for j in range(k):
        if not (assign == j).any():
            counts = torch.bincount(assign, minlength=k)
            big = int(counts.argmax())
            members = (assign == big).nonzero().flatten()
            far = members[torch.cdist(x[members], c[big : big + 1]).flatten().argmax()]
            assign[far] = j
    return [sorted((assign == j).nonzero().flatten().tolist()) for j in range(k)]


# -------------------------------------------------------------------------------------------- filter scores
def filter_norms(weight: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Lp norm of each filter (dim 0); ``[n_filters]``."""
    return weight.detach().reshape(weight.shape[0], -1).norm(p=p, dim=1)


def fpgm_scores(weight: torch.Tensor) -> torch.Tensor:
    """Sum of Euclidean distances from each filter to all others; the lowest is nearest the geometric median.

    Example:
        >>> w = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
        >>> fpgm_scores(w).tolist()   # the middle filter is closest to the others
        [6.0, 5.0, 9.0]
    """
    x = weight.detach().reshape(weight.shape[0], -1).float()
    return torch.cdist(x, x).sum(dim=1)


def lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` lowest scores, ties broken by index (stable); ``[k]`` long tensor."""
    if k <= 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.sort(scores.detach().float(), stable=True).indices
    return order[:k].sort().values


def global_keep_masks(scores: Sequence[torch.Tensor], n_keep: int, *, normalize: bool = False,
                      min_keep: int = 1) -> list[torch.Tensor]:
    """Boolean keep-masks over several layers from one global ranking: the ``n_keep`` highest scores survive.

    ``normalize`` divides each layer's scores by their mean first (so layers of different scale and width
    compete fairly); every layer keeps at least ``min_keep`` filters, which may push the kept total above ``n_keep``.
    """
    flat = []
    for layer, s in enumerate(scores):
        s = s.detach().float()
        if normalize:
            s = s / s.abs().mean().clamp_min(1e-12)
        flat.append(s)
    allv = torch.cat(flat)
    order = torch.sort(allv, descending=True, stable=True).indices
    keep = torch.zeros_like(allv, dtype=torch.bool)
    keep[order[:n_keep]] = True
    masks, start = [], 0
    for s in flat:
        m = keep[start : start + len(s)].clone()
        if int(m.sum()) < min_keep:
            m[torch.sort(s, descending=True, stable=True).indices[:min_keep]] = True
        masks.append(m)
        start += len(s)
    return masks


# ------------------------------------------------------------------------------------------------ model views
def bn_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(fqn, module)`` of every affine BatchNorm in ``model``, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BN_TYPES) and m.affine]


def conv_bn_pairs(model: nn.Module, example_inputs) -> list[tuple[str, str]]:
    """``(conv_fqn, bn_fqn)`` for every BatchNorm whose input is exactly the output of a Conv2d/Linear.

    Found by recording one forward pass (eval mode, no grad), so the pairing follows the real data flow
    rather than the order in which modules were declared. The model is left unchanged.
    """
    produced: dict[int, str] = {}
    pairs: list[tuple[str, str]] = []
    hooks = []
    names = {m: n for n, m in model.named_modules()}

    def after_producer(mod, _inp, out):
        produced[id(out)] = names[mod]

    def before_bn(mod, inp):
        src = produced.get(id(inp[0]))
        if src is not None:
            pairs.append((src, names[mod]))

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(after_producer))
        elif isinstance(m, _BN_TYPES):
            hooks.append(m.register_forward_pre_hook(before_bn))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            _forward(model, example_inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return pairs


def _forward(model: nn.Module, inputs):
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(inputs)


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
def check_training_context(ctx, method_id: str, *, kinds: tuple[str, ...] = ("macs", "params")) -> tuple[str, float]:
    """Check everything a training-time structured method needs before it touches the model.

    Returns the parsed ``(target_kind, value)``. Raises one ConfigError listing every problem.
    """
    from ..recipe import parse_target

    problems: list[str] = []
    kind = value = None
    try:
        kind, value = parse_target(ctx.target)
        if kind not in kinds:
            problems.append(
                f"target={ctx.target!r}: method {method_id!r} prunes filters, so the target is the fraction of "
                f"{' or '.join(kinds)} kept; write e.g. target='macs=0.5'"
            )
    except ConfigError as e:
        problems.append(str(e))
    if ctx.train_data is None:
        problems.append(
            f"train_data=None: method {method_id!r} trains before it prunes; pass training batches "
            f"(RunContext(train_data=loader)) or choose a one-shot method such as 'l1-filter'"
        )
    pe = ctx.prune_epochs
    if isinstance(pe, bool) or not isinstance(pe, int) or pe < 1:
        problems.append(
            f"prune_epochs={pe!r}: method {method_id!r} is a training-time method and cannot run one-shot; "
            f"give prune_epochs >= 1 (epochs of training before the cut) or choose a one-shot method"
        )
    if problems:
        raise ConfigError("; ".join(problems))
    return kind, value


def train_config(ctx, **overrides):
    """The TrainConfig for a method's own training: ``ctx.train_config`` with epochs/device/seed from ``ctx``."""
    from ..train import TrainConfig

    base = ctx.train_config if ctx.train_config is not None else TrainConfig(progress=False)
    fields = {"epochs": ctx.prune_epochs, "device": ctx.device, "seed": ctx.seed}
    fields.update(overrides)
    return dataclasses.replace(base, **fields)


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
def method_options(method_id: str, ctx) -> dict:
    """``MethodSpec.defaults`` of ``method_id`` updated with ``ctx.options`` (unknown keys are a ConfigError)."""
    from ._registry import METHODS

    return METHODS.get(method_id, argument="method").options(ctx.options)


def check_choice(name: str, value, choices: Sequence[str]) -> None:
    """``options[name]`` must be one of ``choices``; the error shows the closest valid value."""
    from .._registry import closest

    if value not in choices:
        hint = closest(str(value), choices)
        raise ConfigError(f"options[{name!r}]={value!r} is not a valid value"
                          + (f"; did you mean {hint!r}?" if hint else "")
                          + f" Valid values: {', '.join(map(str, choices))}; set e.g. "
                            f"options={{{name!r}: {(hint or choices[0])!r}}}")


def check_positive(opts: dict, *names: str, allow_zero: bool = False) -> None:
    """Each named option must be a real number > 0 (>= 0 with ``allow_zero``); all problems in one error."""
    bad = []
    for n in names:
        v = opts[n]
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ok = ok and (v >= 0 if allow_zero else v > 0)
        if not ok:
            bad.append(f"options[{n!r}]={v!r} must be a number {'>= 0' if allow_zero else '> 0'}")
    if bad:
        raise ConfigError("; ".join(bad) + "; fix the value in options={...}")


class restore_on_error:
    """Context manager: on an exception, load back the model's parameters and buffers as they were on entry.

    Used around the training phase of a method (shapes do not change there; the engine's surgery is
    transactional on its own), so a failure leaves the user's model as it was given.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.saved = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            current = self.model.state_dict()
            if set(current) == set(self.saved) and all(current[k].shape == v.shape for k, v in self.saved.items()):
                self.model.load_state_dict(self.saved)
            else:
                log.error("could not restore the model after %s: its structure changed", exc_type.__name__)
        return False


def post_activation_stats(model: nn.Module, modules: dict[str, nn.Module], batches,
                          device: str = "cpu") -> dict[str, dict[str, torch.Tensor]]:
    """Per-channel statistics of ``relu(output)`` of each named module over ``batches`` (eval mode, no grad).

    Returns ``{fqn: {"mean": [C], "max": [C]}}``: the mean over samples and positions of the post-ReLU
    activation (DropNet's criterion) and its maximum (zero max = a dead channel, implicit sparsity).
    """
    sums: dict[str, torch.Tensor] = {}
    maxs: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def make(fqn):
        def hook(_m, _i, out):
            a = torch.relu(out.detach()).float()
            a = a.transpose(0, 1).reshape(a.shape[1], -1)  # [C, N*positions]
            sums[fqn] = sums.get(fqn, 0) + a.sum(dim=1)
            m = a.max(dim=1).values
            maxs[fqn] = torch.maximum(maxs[fqn], m) if fqn in maxs else m
            counts[fqn] = counts.get(fqn, 0) + a.shape[1]

        return hook

    for fqn, mod in modules.items():
        hooks.append(mod.register_forward_hook(make(fqn)))
    was_training = model.training
    n_batches = 0
    try:
        model.eval()
        with torch.no_grad():
            for inputs, _ in batches:
                _forward(model, inputs.to(device) if torch.is_tensor(inputs) else inputs)
                n_batches += 1
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if n_batches == 0:
        raise ConfigError("the statistics batches are empty; pass calib=[(inputs, targets), ...] or train_data")
    return {f: {"mean": (sums[f] / counts[f]).cpu(), "max": maxs[f].cpu()} for f in sums}


def first_batches(data, n: int) -> list:
    """The first ``n`` batches of an iterable of batches, as a list."""
    out = []
    for batch in data:
        if len(out) >= n:
            break
        out.append(batch)
    return out


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
        from .._registry import closest

        hint = closest(bad[0], list(mods))
        raise ConfigError(f"ignore={list(ignore)!r}: {bad[0]!r} is not a module of the model"
                          + (f"; did you mean {hint!r}?" if hint else "") + "; give module FQNs such as 'fc'")
    return {id(mods[f]): f for f in ignore or ()}


def _graph(model: nn.Module, ctx):
    from ..graph import build_graph

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

    from ..criteria import ChannelView, get_criterion, score_member

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


def require_prune_epochs(ctx, method_id: str) -> None:
    """A training-time method needs ``ctx.prune_epochs >= 1`` (the harness checks data, not this budget)."""
    pe = ctx.prune_epochs
    if isinstance(pe, bool) or not isinstance(pe, int) or pe < 1:
        raise ConfigError(f"prune_epochs={pe!r}: method {method_id!r} is a training-time method and cannot run "
                          f"one-shot; give prune_epochs >= 1 (epochs of training before the cut) or choose a "
                          f"one-shot method")


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

    from ..recipe import parse_target

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

    def removed_mask(sel: dict[str, np.ndarray]) -> np.ndarray:
        return graph.removed_flat({gid[k]: v for k, v in sel.items() if len(v)})

    def fits(sel) -> bool:
        return cost(removed_mask(sel)) <= budget

    if allocation == "global":
        entries = sorted(((float(summed[g.key][i]), g.key, i) for g in scored for i in range(g.width)),
                         key=lambda t: (t[0], t[1], t[2]))
        room = {g.key: g.width - min_keep for g in scored}
        order = []
        for _, k, i in entries:
            if room[k] > 0:
                order.append((k, i))
                room[k] -= 1

        def take(n):
            sel: dict[str, list] = {}
            for k, i in order[:n]:
                sel.setdefault(k, []).append(i)
            return {k: np.sort(np.asarray(v, dtype=np.int64)) for k, v in sel.items()}

        lo, hi = 0, len(order)
        if not fits(take(hi)):
            raise ConfigError(_unreachable(ctx.target, cost(removed_mask(take(hi))) / dense, kind))
        while lo < hi:  # smallest n that meets the budget (cost falls as n grows)
            mid = (lo + hi) // 2
            if fits(take(mid)):
                hi = mid
            else:
                lo = mid + 1
        lo = max(lo, sum(1 for k, i in order if summed[k][i] <= 0))  # zero/negative: dead or masked, always cut
        sel = take(lo)
    elif allocation == "uniform":
        def take_f(f):
            out = {}
            for g in scored:
                n = min(int(math.floor(f * g.width + 1e-9)), g.width - min_keep)
                out[g.key] = np.sort(np.argsort(summed[g.key], kind="stable")[:max(n, 0)]).astype(np.int64)
            return out

        if not fits(take_f(1.0)):
            raise ConfigError(_unreachable(ctx.target, cost(removed_mask(take_f(1.0))) / dense, kind))
        lo, hi = 0.0, 1.0
        for _ in range(40):
            mid = (lo + hi) / 2
            if fits(take_f(mid)):
                hi = mid
            else:
                lo = mid
        sel = take_f(hi)
    else:
        check_choice("allocation", allocation, ("global", "uniform"))
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


def check_target_reachable(model: nn.Module, ctx) -> None:
    """Fail up front (model untouched) when ``ctx.target`` needs more than all-but-one channel of every group."""
    groups = filter_groups(model, ctx)
    if not groups:
        raise ConfigError(f"model={type(model).__name__} has no prunable conv/linear channel group (after "
                          f"ignore={list(ctx.ignore)!r}); check ignore= or use a model with prunable layers")
    select_to_target(model, ctx, {g.key: torch.zeros(g.width) for g in groups}, "global", groups)


def cut_to_target(model: nn.Module, ctx, scores: dict[str, torch.Tensor], allocation: str = "global") -> dict:
    """Remove the lowest-scoring channels until ``ctx.target`` is met, through the structural engine.

    The selection is :func:`select_to_target`; it becomes a plan through the public verb
    :func:`prunekit.plan_channels` (which checks every index against the engine's groups) and is applied by
    :func:`prunekit.prune_`: transactional surgery of every coupled tensor, one validation forward, the model
    restored if anything fails. Returns a JSON-ready summary (target, allocation, costs before/after, kept
    widths, the engine report).
    """
    from ..api import plan_channels, prune_

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
