"""Weight criteria: a score per weight (higher = more important = kept), for unstructured pruning.

A criterion is ``fn(model, params, *, calib, loss_fn, generator) -> {param_fqn: scores}`` where ``params``
is ``{param_fqn: Parameter}`` (the weights being pruned) and each score tensor has its parameter's shape.
Register new ones with ``@register_weight_criterion(name, needs_calib=...)``; the allocation and pattern
steps are shared, so a criterion only scores.

Example:
    >>> import torch
    >>> from prunekit.masks.criteria import get_weight_criterion
    >>> lin = torch.nn.Linear(2, 1)
    >>> with torch.no_grad(): _ = lin.weight.copy_(torch.tensor([[-3.0, 1.0]]))
    >>> get_weight_criterion("magnitude").fn(lin, {"weight": lin.weight})["weight"].tolist()
    [[3.0, 1.0]]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .._registry import Registry
from ..errors import ConfigError
from ..graph.trace import move_to

__all__ = ["WeightCriterion", "WEIGHT_CRITERIA", "register_weight_criterion", "get_weight_criterion",
           "connection_sensitivity"]


@dataclass(frozen=True)
class WeightCriterion:
    name: str
    fn: Callable
    needs_calib: bool = False


WEIGHT_CRITERIA: Registry[WeightCriterion] = Registry("weight criterion")


def register_weight_criterion(name: str, *, needs_calib: bool = False):
    """Register ``fn(model, params, *, calib=None, loss_fn=None, generator=None) -> {fqn: scores}``."""

    def deco(fn):
        WEIGHT_CRITERIA.register(name)(WeightCriterion(name, fn, needs_calib))
        return fn

    return deco


def get_weight_criterion(name: str) -> WeightCriterion:
    if name not in WEIGHT_CRITERIA:  # some criteria (lap, obs) are registered by their method's module
        from ..methods import load_all

        load_all()
    return WEIGHT_CRITERIA.get(name, argument="criterion")


@register_weight_criterion("magnitude")
def score_magnitude(model, params, *, calib=None, loss_fn=None, generator=None):
    return {fqn: p.detach().abs() for fqn, p in params.items()}


@register_weight_criterion("random")
def score_random(model, params, *, calib=None, loss_fn=None, generator=None):
    out = {}
    for fqn, p in params.items():
        out[fqn] = torch.rand(p.shape, generator=generator, dtype=torch.float32).to(p.device)
    return out


def connection_sensitivity(model, params, calib, loss_fn=None, *, train_mode: bool = True) -> dict[str, torch.Tensor]:
    """``|w * dL/dw|`` summed over the calibration batches (SNIP's ``|dL/dc|`` at ``c = 1``).

    The loss is taken with the network as in training (``train_mode``, as in Lee et al. 2019: BatchNorm
    normalises with the batch's statistics, dropout is active); every module's train/eval flag and every
    buffer (BatchNorm running statistics) are put back afterwards, so scoring changes nothing but the
    returned scores. Gradients are taken with ``torch.autograd.grad``, so ``.grad`` is left untouched.
    """
    loss_fn = loss_fn or F.cross_entropy
    names = list(params)
    tensors = [params[n] for n in names]
    totals = [torch.zeros_like(t) for t in tensors]
    n_batches = 0
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    model.train(train_mode)
    try:
        for inputs, targets in calib:
            inputs, targets = move_to((inputs, targets), tensors[0].device if tensors else "cpu")
            out = model(inputs)
            grads = torch.autograd.grad(loss_fn(out, targets), tensors, allow_unused=True)
            for total, g, t in zip(totals, grads, tensors):
                if g is not None:
                    total.add_((g * t).detach())
            n_batches += 1
    finally:
        for m, training in modes:
            m.training = training
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    if n_batches == 0:
        raise ConfigError("calib is empty: connection sensitivity needs at least one (inputs, targets) batch")
    return {n: t.abs() for n, t in zip(names, totals)}


@register_weight_criterion("snip", needs_calib=True)
def score_snip(model, params, *, calib=None, loss_fn=None, generator=None):
    return connection_sensitivity(model, params, calib, loss_fn)
