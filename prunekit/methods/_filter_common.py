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
        >>> soft_threshold(torch.tensor([-0.3, 0.05, 0.5]), 0.1).tolist()
        [-0.19999998807907104, 0.0, 0.4000000059604645]
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
    x = weight.detach().reshape(weight.shape[0], -1).float()  # [n_filters, rest]
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

    ``normalize`` divides each layer's scores by their L2 norm first (so layers of different scale compete
    fairly); every layer keeps at least ``min_keep`` filters, which may push the kept total above ``n_keep``.
    """
    flat = []
    for layer, s in enumerate(scores):
        s = s.detach().float()
        if normalize:
            s = s / s.norm().clamp_min(1e-12)
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


def isclose_fraction(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=0.0, abs_tol=1e-9)
