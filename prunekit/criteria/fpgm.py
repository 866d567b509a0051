"""``fpgm``: distance of each filter to the others (near the geometric median = redundant).

Yang He, Ping Liu, Ziwei Wang, Zhilan Hu, Yi Yang, "Filter Pruning via Geometric Median for Deep
Convolutional Neural Networks Acceleration", CVPR 2019, https://arxiv.org/abs/1811.00250. Instead of
assuming that small filters matter little, the paper removes filters that the rest of the layer can stand
in for: those nearest the layer's geometric median. Its fast form scores filter j by the sum of Euclidean
distances from j to every other filter of the same member; the smallest sums go first.
"""
from __future__ import annotations

import torch

from ._base import ChannelView, register_criterion


@register_criterion("fpgm")
def score_fpgm(view: ChannelView) -> torch.Tensor:
    x = view.weight.detach().double()  # [n_channels, rest]
    return torch.cdist(x, x).sum(1)
