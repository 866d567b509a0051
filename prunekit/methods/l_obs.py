"""Layer-wise Optimal Brain Surgeon (L-OBS).

Paper: "Learning to Prune Deep Neural Networks via Layer-wise Optimal Brain Surgeon", Xin Dong, Shangyu
Chen, Sinno Jialin Pan. NeurIPS 2017. https://arxiv.org/abs/1705.07565

Optimal Brain Surgeon removes the weight whose deletion raises a quadratic model of the loss least and
moves the remaining weights to absorb the damage; its cost is the inverse Hessian of the whole network.
L-OBS makes this tractable by doing it one layer at a time against a layer-local error: the squared
difference between the layer's pre-activations before and after pruning on a set of training inputs. The
Hessian of that error is the same for every output unit, H = mean of x x^T over the layer's (bias-augmented)
inputs, so one small matrix per layer suffices. A weight's saliency is w_q^2 / (2 [H^-1]_qq); the least
salient weights of each layer are removed and the survivors of the same output unit are corrected so the
layer's outputs change as little as possible. We remove each layer's chosen set jointly, with the exact
least-squares correction on the kept weights of every row (the paper applies single-weight updates in
saliency order from one inverse), and we regularise H with a small multiple of its mean diagonal.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..graph.trace import model_device, move_to
from ..masks import install_masks_, prunable_weights, register_weight_criterion, view2d
from ..train.rewind import method_options, target_sparsity
from ._registry import MethodResult, RunContext, register_method

log = logging.getLogger(__name__)

__all__ = ["layer_hessians", "obs_saliency", "obs_prune_layer", "run_l_obs"]


def _layer_inputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows the layer multiplies by its 2-D weight view, with a trailing 1 for the bias: ``[n, d + 1]``."""
    if isinstance(module, nn.Linear):
        rows = x.reshape(-1, x.shape[-1])
    elif isinstance(module, nn.Conv2d):
        if module.groups != 1 or isinstance(module.padding, str):
            raise ConfigError(f"l-obs supports Conv2d with groups=1 and numeric padding; a layer has "
                              f"groups={module.groups}, padding={module.padding!r}: ignore it (ignore=[...])")
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding,
                        stride=module.stride)  # [N, C*kh*kw, L]
        rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    else:
        raise ConfigError(f"l-obs handles Linear and Conv2d layers, not {type(module).__name__}; ignore it")
    return torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1).double()


@torch.no_grad()
def layer_hessians(model: nn.Module, fqns, calib, *, max_samples: int | None = None) -> dict[str, torch.Tensor]:
    """``{weight_fqn: H}`` with ``H = mean(x x^T)`` over the layer's bias-augmented inputs on ``calib``.

    ``calib`` is an iterable of ``(inputs, targets)`` batches; ``max_samples`` caps the input rows used.
    """
    modules = {f: model.get_submodule(f.rpartition(".")[0]) for f in fqns}
    sums = {f: None for f in fqns}
    counts = {f: 0 for f in fqns}
    handles = []

    def hook(fqn):
        def fn(module, args):
            rows = _layer_inputs(module, args[0].detach())
            if max_samples is not None:
                rows = rows[: max(0, max_samples - counts[fqn])]
            h = rows.T @ rows
            sums[fqn] = h if sums[fqn] is None else sums[fqn] + h
            counts[fqn] += rows.shape[0]
        return fn

    for f, m in modules.items():
        handles.append(m.register_forward_pre_hook(hook(f)))
    was_training = model.training
    model.eval()
    try:
        for inputs, _ in calib:
            model(move_to(inputs, model_device(model)))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    empty = [f for f in fqns if not counts[f]]
    if empty:
        raise ConfigError(f"calib gave no inputs to {empty}; pass calib=[(inputs, targets), ...] batches that reach "
                          "those layers")
    return {f: sums[f] / counts[f] for f in fqns}


def _inverse(h: torch.Tensor, damp: float) -> torch.Tensor:
    reg = damp * float(h.diagonal().mean()) + 1e-12
    return torch.linalg.inv(h + reg * torch.eye(h.shape[0], dtype=h.dtype))


def obs_saliency(weight2d: torch.Tensor, h_inv: torch.Tensor) -> torch.Tensor:
    """``w_q^2 / (2 [H^-1]_qq)`` for every weight of a ``[out, d]`` view (``h_inv`` is ``[d+1, d+1]``).

    Example:
        >>> w = torch.tensor([[1.0, 1.0]])
        >>> h_inv = torch.diag(torch.tensor([1.0, 4.0, 1.0]))   # input 1 is cheap to lose
        >>> obs_saliency(w, h_inv)
        tensor([[0.5000, 0.1250]])
    """
    d = h_inv.diagonal()[: weight2d.shape[1]].to(weight2d.dtype)
    return weight2d.pow(2) / (2 * d)


def obs_prune_layer(weight: torch.Tensor, bias: torch.Tensor | None, h: torch.Tensor, sparsity: float, *,
                    damp: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Prune ``sparsity`` of one layer's weights by OBS saliency and correct the survivors.

    Returns ``(new_weight, new_bias, mask)``; nothing is modified in place. For every output row the kept
    weights (and the bias) take the values minimising ``(w' - w)^T H (w' - w)`` with the pruned entries at 0:
    ``w'_K = w_K + H_KK^-1 H_KS w_S``.
    """
    w2 = view2d(weight.detach()).double()
    out, d = w2.shape
    has_bias = bias is not None
    wa = torch.cat([w2, (bias.detach().double() if has_bias else w2.new_zeros(out)).reshape(-1, 1)], dim=1)
    hd = h.double() + damp * float(h.diagonal().mean()) * torch.eye(d + 1, dtype=torch.float64)
    sal = obs_saliency(w2, _inverse(h.double(), damp))
    n_prune = round(sparsity * w2.numel())
    mask = torch.ones(w2.numel(), dtype=torch.bool)
    if n_prune:
        mask[torch.topk(sal.flatten(), n_prune, largest=False, sorted=False).indices] = False
    mask = mask.reshape(out, d)
    new = wa.clone()
    for r in range(out):
        pruned = torch.nonzero(~mask[r]).flatten()
        if pruned.numel() == 0:
            continue
        kept = torch.nonzero(mask[r]).flatten()
        if has_bias:
            kept = torch.cat([kept, torch.tensor([d])])
        new[r, pruned] = 0.0
        if kept.numel():
            rhs = hd[kept][:, pruned] @ wa[r, pruned]
            new[r, kept] = wa[r, kept] + torch.linalg.solve(hd[kept][:, kept], rhs)
    new_w = new[:, :d].to(weight.dtype).reshape(weight.shape)
    new_b = new[:, d].to(bias.dtype) if has_bias else None
    return new_w, new_b, mask.reshape(weight.shape)


@register_weight_criterion("obs", needs_calib=True)
def score_obs(model, params, *, calib=None, loss_fn=None, generator=None):
    """Weight criterion ``"obs"``: L-OBS saliency (no weight correction; use the ``l-obs`` method for that)."""
    hs = layer_hessians(model, list(params), calib)
    return {f: obs_saliency(view2d(p.detach()).double(), _inverse(hs[f], 1e-5)).float().reshape(p.shape)
            for f, p in params.items()}


@register_method("l-obs", kind="unstructured", needs_data=True, defaults={
    "max_samples": 10000,  # input rows per layer for H (entry's small-scale check: 10k samples)
    "damp": 1e-5,  # H + damp * mean(diag H) * I (the paper starts its Woodbury recursion from 1e6 * I)
    "exempt": (),
})
def run_l_obs(ctx: RunContext) -> MethodResult:
    """One-shot L-OBS: every layer pruned to the target sparsity with OBS corrections; fine-tune afterwards."""
    opts = method_options("l-obs", ctx.options)
    sparsity = target_sparsity(ctx.target, "l-obs")
    calib = ctx.calib if ctx.calib is not None else ctx.train_data
    if calib is None:
        raise ConfigError("l-obs builds each layer's Hessian from data: pass calib=[(inputs, targets), ...] "
                          "(or train_data)")
    params = prunable_weights(ctx.model, ctx.ignore, tuple(opts["exempt"]))
    hs = layer_hessians(ctx.model, list(params), calib, max_samples=opts["max_samples"])
    updates = {}
    for fqn in params:  # compute everything first: a failure leaves the model untouched
        module = ctx.model.get_submodule(fqn.rpartition(".")[0])
        updates[fqn] = (module, *obs_prune_layer(module.weight, getattr(module, "bias", None), hs[fqn], sparsity,
                                                 damp=opts["damp"]))
    masks = {}
    with torch.no_grad():
        for fqn, (module, w, b, mask) in updates.items():
            module.weight.copy_(w)
            if b is not None:
                module.bias.copy_(b)
            masks[fqn] = mask
    install_masks_(ctx.model, masks, mode="hard")
    numel = sum(m.numel() for m in masks.values())
    return MethodResult(ctx.model, callbacks=[], info={
        "sparsity": 1 - sum(int(m.sum()) for m in masks.values()) / numel})
