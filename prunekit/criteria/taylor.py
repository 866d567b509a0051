"""First-order Taylor criteria: ``taylor`` (Molchanov et al. 2019) and ``taylor-act`` (Molchanov et al. 2017).

Pavlo Molchanov, Stephen Tyree, Tero Karras, Timo Aila, Jan Kautz, "Pruning Convolutional Neural Networks
for Resource Efficient Inference", ICLR 2017, https://arxiv.org/abs/1611.06440: the loss change when a
feature map is zeroed is estimated to first order by ``|mean(a * dL/da)|`` over batch and positions, then
each layer's vector is scaled to unit l2 norm so layers can be ranked together.
Pavlo Molchanov, Arun Mallya, Stephen Tyree, Iuri Frosio, Jan Kautz, "Importance Estimation for Neural
Network Pruning", CVPR 2019, https://arxiv.org/abs/1906.10771: the squared first-order estimate
``(g * dL/dg)^2`` of a gate ``g`` placed after BatchNorm, which for a parameter group is
``(sum_s w_s dL/dw_s)^2``; ranked globally without normalisation.

Both are computed from the calibration gradients the engine accumulates. For a layer ``y = W a`` (conv or
linear) ``sum W * dL/dW = sum a * dL/da`` over every sample and position, so a consumer member's
``sum_rest w * grad`` is exactly the activation-times-gradient sum of the channel as that layer reads it
(after BN, ReLU and pooling), and a BatchNorm scale's ``gamma * dL/dgamma`` is exactly the gate-after-BN
term. ``taylor`` squares each calibration batch's estimate and averages over batches, as the 2019 paper
averages over mini-batches (it keeps one gradient copy per batch: memory = batches x model); ``taylor-act``
uses the gradient summed over the calibration batches.
"""
from __future__ import annotations

import torch

from ._base import ChannelView, register_criterion


def taylor_sum(view: ChannelView) -> torch.Tensor:
    """``sum_rest w * dL/dw`` per channel ``[n_channels]`` (zeros without gradients)."""
    if view.grad is None:
        return torch.zeros(view.n_channels, dtype=torch.float64)
    return (view.weight.double() * view.grad.double()).sum(1)


@register_criterion("taylor", needs=("batch_grads",))
def score_taylor(view: ChannelView) -> torch.Tensor:
    """``mean over batches b of (sum_rest w * dL_b/dw)^2`` per channel."""
    if not view.grad_batches:
        return taylor_sum(view).pow(2)
    w = view.weight.double()
    return torch.stack([(w * g.double()).sum(1).pow(2) for g in view.grad_batches]).mean(0)


@register_criterion("taylor-act", needs=("grads",))
def score_taylor_act(view: ChannelView) -> torch.Tensor:
    s = taylor_sum(view).abs()
    n = s.norm()
    return s / n if n > 0 else s
