"""``fisher-obd``: channel Optimal Brain Damage with a diagonal Fisher (C-OBD, EigenDamage's baseline).

Chaoqi Wang, Roger Grosse, Sanja Fidler, Guodong Zhang, "EigenDamage: Structured Pruning in the
Kronecker-Factored Eigenbasis", ICML 2019, https://arxiv.org/abs/1905.05934, compare against C-OBD: OBD's
saliency ``1/2 F_ii w_i^2`` with the Fisher's diagonal in place of the Hessian, summed over the weights of a
channel, channels ranked over the whole network.

The diagonal is estimated from the gradients the engine records per calibration batch: ``F_ii ~ sum_b
(dL_b/dw_i)^2``. With labels drawn from the model's own predictive (pass
``loss_fn=prunekit.criteria.collect.sampled_label_loss(...)``: the "true" Fisher of the paper) a batch
gradient has mean zero, so its square estimates the per-example Fisher's diagonal up to the factor 1/B (B the
batch size, the same for every weight); with the data's labels it is the mini-batch empirical Fisher. The
reference code squares per-example gradients instead (less noisy at the same number of examples).

Example:
    >>> import numpy as np, torch
    >>> from prunekit.criteria import ChannelView, get_criterion
    >>> v = ChannelView("w", 0, "producer", np.arange(2), torch.tensor([[1.0, 2.0], [3.0, 0.0]]),
    ...                 grad_batches=[torch.tensor([[1.0, 1.0], [0.0, 5.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]])])
    >>> get_criterion("fisher-obd").fn(v).tolist()   # row 0: 1*(1+1) + 4*(1+0); row 1: 9*(0+1) + 0
    [6.0, 9.0]
"""
from __future__ import annotations

import torch

from ._base import ChannelView, register_criterion


@register_criterion("fisher-obd", needs=("batch_grads",))
def score_fisher_obd(view: ChannelView) -> torch.Tensor:
    """``sum over the channel's weights of w^2 * sum_b g_b^2`` (zeros without gradients)."""
    batches = view.grad_batches or ([view.grad] if view.grad is not None else [])
    if not batches:
        return torch.zeros(view.n_channels, dtype=torch.float64)
    fisher = sum(g.double().pow(2) for g in batches)
    return (view.weight.double().pow(2) * fisher).sum(1)
