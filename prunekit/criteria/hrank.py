"""``hrank``: average rank of each channel's feature map over calibration images.

Mingbao Lin, Rongrong Ji, Yan Wang, Yichen Zhang, Baochang Zhang, Yonghong Tian, Ling Shao, "HRank: Filter
Pruning using High-Rank Feature Map", CVPR 2020, https://arxiv.org/abs/2002.10179. The paper observes that
the rank of a filter's H x W output map hardly depends on the image, so a few batches estimate it; maps
of low rank hold little information and their filters go first. We take the map where the next layer
reads it (after BN and ReLU) and average ``matrix_rank`` over the calibration images.
"""
from __future__ import annotations

import torch

from ._base import ChannelView, register_criterion
from ._stats import _cached, channel_maps, per_channel

MAX_IMAGES = 128  # images per reading layer; the paper finds the average rank stable after a few batches


def average_rank(maps: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` -> mean matrix rank per channel ``[C]``; ``[N, C, k]`` maps are sqrt(k) x sqrt(k) when
    k is a square, else 1 x k rows."""
    m = maps.float()
    if m.dim() == 3:  # a flattened map read by a Linear: square it up when it is square, else one row
        side = int(round(m.shape[2] ** 0.5))
        m = m.reshape(m.shape[0], m.shape[1], side, side) if side * side == m.shape[2] else m.unsqueeze(2)
    return torch.linalg.matrix_rank(m).double().mean(0)


@register_criterion("hrank", needs=("activations",))
def score_hrank(view: ChannelView) -> torch.Tensor:
    def compute():
        maps = channel_maps(view)
        return torch.stack([average_rank(m[:MAX_IMAGES]) for m in maps]).mean(0) if maps else None

    return per_channel(view, _cached(view, "hrank", compute))
