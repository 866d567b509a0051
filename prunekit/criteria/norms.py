"""Magnitude criteria (``l1``, ``l2``) and the ``random`` baseline.

Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017, https://arxiv.org/abs/1608.08710 rank a
layer's filters by the L1 norm of their weights; the L2 variant is the default of most structured-pruning
toolkits. A random score is the control every criterion should beat. Each receives one member's tensor
with the channel dim first and returns one score per channel.
"""
from __future__ import annotations

import torch

import types

import numpy as np

from ._base import ChannelView, position_sums, random_generator, register_criterion


def _fast_l1(t, dim, channel, view):
    return position_sums(t, dim, channel, "l1")


def _fast_l2(t, dim, channel, view):
    chans, s = position_sums(t, dim, channel, "l2sq")
    return chans, np.sqrt(s)


def _fast_random(t, dim, channel, view):
    chans = np.unique(channel[channel >= 0])
    v = types.SimpleNamespace(fqn=view["fqn"], seed=view["seed"])
    return chans, torch.rand(len(chans), generator=random_generator(v), dtype=torch.float64).numpy()


@register_criterion("l1", fast=_fast_l1)
def score_l1(view: ChannelView) -> torch.Tensor:
    return view.weight.double().abs().sum(1)


@register_criterion("l2", fast=_fast_l2)
def score_l2(view: ChannelView) -> torch.Tensor:
    return view.weight.double().pow(2).sum(1).sqrt()


@register_criterion("random", fast=_fast_random)
def score_random(view: ChannelView) -> torch.Tensor:
    return torch.rand(view.n_channels, generator=random_generator(view), dtype=torch.float64)
