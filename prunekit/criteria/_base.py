"""Criterion registry, the per-member view criteria receive, and the separate scoring steps.

Scoring (one criterion on one member view), reduction across the coupled members of a group,
normalisation and selection are four small functions, so methods can recombine them.
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Callable

import numpy as np
import torch

from .._registry import Registry
from ..errors import ConfigError

NEEDS = ("grads", "activations", "batch_grads")


@dataclasses.dataclass(frozen=True)
class CriterionSpec:
    name: str
    fn: Callable
    needs: tuple = ()
    # optional shortcut with the same result as fn: (tensor, dim, channel map, view fields) -> scores per
    # channel, without gathering rows (saves a copy of every member on billion-parameter models)
    fast: Callable | None = None


def _validate(name, spec):
    bad = [n for n in spec.needs if n not in NEEDS]
    if bad:
        raise ConfigError(f"register_criterion({name!r}, needs={spec.needs!r}): unknown need(s) {bad}; "
                          f"choose from {NEEDS}")


CRITERIA: Registry[CriterionSpec] = Registry("criterion", validate=_validate)


def register_criterion(name: str, needs=(), fast: Callable | None = None):
    """Register ``fn(view: ChannelView) -> Tensor[n_channels]`` (higher = keep) under ``name``.

    Example:
        >>> from prunekit.criteria import register_criterion, CRITERIA
        >>> @register_criterion("doc-l0", needs=())
        ... def _l0(view):
        ...     return (view.weight != 0).sum(1).float()
        >>> "doc-l0" in CRITERIA
        True
    """
    needs = tuple(needs)

    def deco(fn):
        CRITERIA.register(name)(CriterionSpec(name, fn, needs, fast))
        return fn

    return deco


def get_criterion(name: str) -> CriterionSpec:
    return CRITERIA.get(name, argument="criterion")


@dataclasses.dataclass
class ConsumerView:
    fqn: str  # parameter path of the consuming weight
    module_fqn: str
    module: torch.nn.Module | None
    dim: int  # the dim of the parameter that holds the group's channels
    weight: torch.Tensor  # [n_channels, rest] sliced like ChannelView.weight


@dataclasses.dataclass
class ChannelView:
    """What a criterion receives for ONE coupled member of a group (channel dim first everywhere).

    Fields: ``fqn`` (parameter/buffer path), ``dim`` (its channel dim), ``role`` ("producer", "consumer",
    "other"), ``channels`` (the group channel index of each row, ``[n_channels]``), ``weight``
    (``[n_channels, rest]``: the member tensor with the channel dim moved first, the positions of one
    channel, e.g. one attention head, concatenated into ``rest``), ``grad`` (same layout; summed over the
    calibration batches, or None), ``grad_batches`` (the same per calibration batch, a list, when the
criterion needs ``"batch_grads"``; otherwise None), ``activations`` (output of the producing module over the calibration
    batches, ``[n_channels, samples*spatial]``, or None), ``module``/``module_fqn`` (the module owning the
    tensor), ``group`` (the :class:`~prunekit.graph.Group`), ``consumers`` (``ConsumerView`` list: the
    consuming layers' weights sliced the same way), ``collect_inputs(module_fqn)`` (recorded inputs of
    that module over the calibration batches, a list of tensors) and ``seed``.
    """

    fqn: str
    dim: int
    role: str
    channels: np.ndarray
    weight: torch.Tensor
    grad: torch.Tensor | None = None
    activations: torch.Tensor | None = None
    module: torch.nn.Module | None = None
    module_fqn: str = ""
    group: object = None
    consumers: list = dataclasses.field(default_factory=list)
    collect_inputs: Callable | None = None
    seed: int = 0
    grad_batches: list | None = None

    @property
    def n_channels(self) -> int:
        return len(self.channels)


def channel_rows(t: torch.Tensor, dim: int, channel: np.ndarray):
    """``t`` with ``dim`` first and the positions of each channel gathered into one row.

    Returns (channels ``[n]``, rows ``[n, k*rest]``); positions with channel -1 are left out. Channels with
    unequal position counts are zero-padded.
    """
    valid = np.nonzero(channel >= 0)[0]
    ch = channel[valid]
    order = np.argsort(ch, kind="stable")
    valid, ch = valid[order], ch[order]
    chans, counts = np.unique(ch, return_counts=True)
    x = t.detach().movedim(dim, 0).reshape(t.shape[dim], -1)
    rows = x[torch.from_numpy(valid)]
    k = int(counts.max()) if len(counts) else 1
    if len(counts) and (counts == k).all():
        rows = rows.reshape(len(chans), -1)
    else:  # uneven channels (rare): zero-pad to the longest, so sums and norms are unchanged
        out = []
        start = 0
        for c in counts.tolist():
            r = rows[start:start + c]
            out.append(torch.cat([r, r.new_zeros(k - c, r.shape[1])]).reshape(-1))
            start += c
        rows = torch.stack(out)
    return chans, rows


def random_generator(view) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((zlib.crc32(view.fqn.encode()) + view.seed * 7919) % (2 ** 31))
    return g


def position_sums(t: torch.Tensor, dim: int, channel: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel sums of ``|t|`` (``kind="l1"``) or ``t**2`` (``"l2sq"``) over everything but ``dim``.

    Reduces in the tensor's own dtype with the fastest kernel for the layout (no float64 copy of a large
    tensor); returns (channels in sorted order, float64 sums).
    """
    x = t.detach()
    if not x.is_floating_point():  # an integer buffer coupled to a group (position ids) says nothing of a channel
        x = torch.zeros((), dtype=torch.float32, device=x.device).expand(x.shape)
    other = [d for d in range(x.dim()) if d != dim]
    if not other:
        per_pos = x.abs() if kind == "l1" else x.square()
    elif dim == 0:  # contiguous trailing reduction: vector_norm is a single fast pass
        per_pos = torch.linalg.vector_norm(x, 1 if kind == "l1" else 2, dim=other)
        if kind != "l1":
            per_pos = per_pos.double().square()
    else:
        # summing over dim 0 through one temporary the size of the whole tensor is memory-bound (a large
        # embedding's columns); blocks of rows whose temporary stays in cache are much faster
        # (the blocks' rows add up as whole vectors, the CPU's fastest reduction; the other dims after)
        acc = None
        for block in x.split(max(1, (1 << 18) // max(1, x[0].numel()))):
            part = (block.abs() if kind == "l1" else block.square()).reshape(len(block), -1).sum(0)
            acc = part if acc is None else acc.add_(part)
        rest = [d - 1 for d in other if d]
        per_pos = acc.view(x.shape[1:]).sum(rest) if rest else acc
    per_pos = per_pos.double().cpu().numpy()
    valid = channel >= 0
    ch = channel[valid]
    chans = np.flatnonzero(np.bincount(ch))  # the channels present, sorted (np.unique hashes: slower)
    return chans, np.bincount(ch, weights=per_pos[valid])[chans]


def score_member(spec: CriterionSpec, view: ChannelView) -> np.ndarray:
    """Scores ``[n_channels]`` of one member (float64, higher = keep)."""
    s = spec.fn(view)
    s = torch.as_tensor(s).detach().double().reshape(-1).cpu().numpy()
    if len(s) != view.n_channels:
        raise ConfigError(f"criterion {spec.name!r} returned {len(s)} scores for {view.n_channels} channels of "
                          f"{view.fqn!r}; a criterion must return one score per row of view.weight")
    return s


def normalise(scores: np.ndarray, how: str | None = "mean") -> np.ndarray:
    """Scale scores so members/groups are comparable: ``"mean"`` (divide by mean), ``"max"``, ``"sum"``
    or None."""
    if how is None:
        return scores
    d = {"mean": np.mean, "max": np.max, "sum": np.sum}[how](np.abs(scores)) if len(scores) else 1.0
    return scores / d if d > 0 else scores


def reduce_scores(width: int, member_scores: list, how: str = "group") -> np.ndarray:
    """Combine ``[(member, channels, scores)]`` into one score per group channel.

    ``"group"``: mean of normalised scores over every member holding the channel; ``"producer"``: the same
    over producer members only (falls back to all members when the group has none).
    """
    if how not in ("group", "producer"):
        raise ConfigError(f"reduce={how!r} is not a reduction; choose 'group' or 'producer'")
    use = member_scores
    if how == "producer":
        prod = [x for x in member_scores if x[0].role == "producer"]
        use = prod or member_scores
    total = np.zeros(width)
    count = np.zeros(width)
    for _, chans, s in use:
        total[chans] += normalise(s, "mean")
        count[chans] += 1
    count[count == 0] = 1
    return total / count


def select_lowest(scores: np.ndarray, n_remove: int) -> np.ndarray:
    """Indices of the ``n_remove`` lowest scores (ties broken by index), sorted."""
    if n_remove <= 0:
        return np.zeros(0, np.int64)
    order = np.argsort(scores, kind="stable")
    return np.sort(order[:n_remove])
