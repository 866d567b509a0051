"""Activation statistics: ``apoz`` (Hu et al. 2016), ``mean-act`` (Molchanov et al. 2017's baseline) and
``act-norm`` (the response norm of Dubey et al.'s coreset filter pruning, ECCV 2018).

Hengyuan Hu, Rui Peng, Yu-Wing Tai, Chi-Keung Tang, "Network Trimming: A Data-Driven Neuron Pruning
Approach towards Efficient Deep Architectures", arXiv 2016, https://arxiv.org/abs/1607.03250 measure the
Average Percentage of Zeros of a channel's post-ReLU output over a data set: a channel that is mostly zero
carries little. Mean activation (compared as a criterion in Molchanov et al., ICLR 2017,
https://arxiv.org/abs/1611.06440) keeps the channels with the largest average response. Both are read
where the network uses the channel (the input of its consuming layers), over the calibration batches.
"""
from __future__ import annotations

import torch

from ._base import ChannelView, register_criterion
from ._stats import _cached, channel_maps, per_channel


def _reduce_maps(view: ChannelView, key: str, fn) -> torch.Tensor | None:
    def compute():
        maps = channel_maps(view)
        if not maps:
            return None
        return torch.stack([fn(m.movedim(1, 0).reshape(m.shape[1], -1)) for m in maps]).mean(0)  # [width]

    return _cached(view, key, compute)


@register_criterion("apoz", needs=("activations",))
def score_apoz(view: ChannelView) -> torch.Tensor:
    """``1 - APoZ``: the fraction of non-zero responses (higher = keep)."""
    return per_channel(view, _reduce_maps(view, "apoz", lambda a: (a != 0).double().mean(1)))


@register_criterion("mean-act", needs=("activations",))
def score_mean_act(view: ChannelView) -> torch.Tensor:
    """Mean response of each channel over calibration images and positions."""
    return per_channel(view, _reduce_maps(view, "mean-act", lambda a: a.double().mean(1)))


@register_criterion("act-norm", needs=("activations",))
def score_act_norm(view: ChannelView) -> torch.Tensor:
    """The L2 norm of a channel's responses over every calibration image and position (summed over the layers
    reading it): step 1 of coreset filter pruning (Dubey et al., ECCV 2018)."""
    maps = channel_maps(view)
    if not maps:
        return per_channel(view, None)
    sq = torch.stack([m.double().movedim(1, 0).reshape(m.shape[1], -1).pow(2).sum(1) for m in maps]).sum(0)
    return per_channel(view, sq.sqrt())
