"""Calibration statistics shared by the data-driven criteria (activations as the next layers read them).

Every member of a group gets the same channel statistic, so the engine's reduction (``reduce="group"`` or
``"producer"``) leaves a paper's ranking intact. The statistic of a channel is taken where the network uses
it: the input of its consuming Conv2d/Linear layers (after BN, ReLU, pooling), recorded once per
``score_groups`` call and cached for the other members and criteria of the same call.
"""
from __future__ import annotations

import weakref

import torch
from torch import nn

from ._base import ChannelView

_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _cached(view: ChannelView, key: str, compute):
    """Memo per calibration run (the ``collect_inputs`` closure) and group; uncached without one."""
    if view.collect_inputs is None or view.group is None:
        return compute()
    try:
        store = _CACHE.setdefault(view.collect_inputs, {})
    except TypeError:  # pragma: no cover - a non-weakref-able callable
        return compute()
    k = (key, id(view.group))
    if k not in store:
        store[k] = compute()
    return store[k]


def width_of(view: ChannelView) -> int:
    return int(view.group.width) if view.group is not None else view.n_channels


def readers(view: ChannelView) -> list:
    """``[(consumer view, inputs [N, width, ...])]`` for the Conv2d (groups=1) and Linear layers reading the
    group's channels, with the inputs recorded over the calibration batches and put channel-second.

    A Linear reading a flattened ``[N, C*H*W]`` tensor is reshaped to ``[N, C, H*W]``.
    """
    width = width_of(view)
    out = []
    for c in view.consumers:
        mod = c.module
        xs = view.collect_inputs(c.module_fqn) if view.collect_inputs is not None else []
        if not xs or c.dim != 1:
            continue
        x = torch.cat([t.detach() for t in xs]).float()
        if isinstance(mod, nn.Conv2d) and mod.groups == 1 and x.dim() == 4 and x.shape[1] == width:
            out.append((c, x))
        elif isinstance(mod, nn.Linear) and x.dim() == 2 and x.shape[1] % width == 0:
            out.append((c, x.reshape(x.shape[0], width, -1)))
    return out


def channel_maps(view: ChannelView) -> list:
    """Feature maps of the group's channels ``[N, width, *spatial]``, one tensor per reading layer.

    Falls back to the producer's own output (``view.activations``) when no Conv2d/Linear reads the group;
    returns ``[]`` when neither is available.
    """
    def compute():
        maps = [x for _, x in readers(view)]
        if not maps and view.activations is not None and view.role == "producer":
            maps = [view.activations.float().unsqueeze(0)]  # [1, n, samples]: no per-image layout
        return maps

    return _cached(view, "maps", compute)


def per_channel(view: ChannelView, scores: torch.Tensor | None) -> torch.Tensor:
    """Group-channel scores ``[width]`` -> this member's rows; a neutral constant when there are none."""
    if scores is None:
        return torch.ones(view.n_channels, dtype=torch.float64)
    return scores.double()[torch.as_tensor(view.channels, dtype=torch.long)]
