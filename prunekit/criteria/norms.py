"""Magnitude criteria (``l1``, ``l2``) and the ``random`` baseline.

Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017, https://arxiv.org/abs/1608.08710 rank a
layer's filters by the L1 norm of their weights; the L2 variant is the default of most structured-pruning
toolkits. A random score is the control every criterion should beat. Each receives one member's tensor
with the channel dim first and returns one score per channel.
"""
from __future__ import annotations

import torch

from ._base import ChannelView, random_generator, register_criterion


@register_criterion("l1")
def score_l1(view: ChannelView) -> torch.Tensor:
    return view.weight.abs().sum(1)


@register_criterion("l2")
def score_l2(view: ChannelView) -> torch.Tensor:
    return view.weight.double().pow(2).sum(1).sqrt()


@register_criterion("random")
def score_random(view: ChannelView) -> torch.Tensor:
    return torch.rand(view.n_channels, generator=random_generator(view), dtype=torch.float64)
