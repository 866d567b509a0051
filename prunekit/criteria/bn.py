"""``bn-scale``: the magnitude of each channel's BatchNorm scale ``|gamma|``.

Zhuang Liu et al., "Learning Efficient Convolutional Networks Through Network Slimming", ICCV 2017,
https://arxiv.org/abs/1708.06519 use the BatchNorm scale as the channel's importance: a channel whose
normalised output is multiplied by a small gamma contributes little. Members that are not normalisation
scales return a constant, so a group containing a BatchNorm is ranked by its gammas alone (a group without
one has no signal under this criterion: use ``l1`` there).
"""
from __future__ import annotations

import torch
from torch import nn

from ._base import ChannelView, register_criterion

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)


@register_criterion("bn-scale")
def score_bn_scale(view: ChannelView) -> torch.Tensor:
    if isinstance(view.module, _NORMS) and view.fqn.endswith(".weight"):
        return view.weight.detach().double().abs().sum(1)
    return torch.ones(view.n_channels, dtype=torch.float64)
