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
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..errors import ConfigError
from ..criteria.collect import collect, layer_rows
from ..masks import install_masks_, prunable_weights, register_weight_criterion, view2d
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["layer_hessians", "obs_saliency", "obs_prune_layer", "layer_output_error", "LOBSConfig", "run_l_obs"]


def _layer_inputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows the layer multiplies by its 2-D weight view, with a trailing 1 for the bias: ``[n, d + 1]``."""
    _check_layer(module)
    return layer_rows(module, x, bias=True)


def _check_layer(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d) and (module.groups != 1 or isinstance(module.padding, str)):
        raise ConfigError(f"l-obs supports Conv2d with groups=1 and numeric padding; a layer has "
                          f"groups={module.groups}, padding={module.padding!r}: ignore it (ignore=[...])")
    if not isinstance(module, (nn.Linear, nn.Conv2d)):
        raise ConfigError(f"l-obs handles Linear and Conv2d layers, not {type(module).__name__}; ignore it")


def layer_hessians(model: nn.Module, fqns, calib, *, max_samples: int | None = None) -> dict[str, torch.Tensor]:
    """``{weight_fqn: H}`` with ``H = mean(x x^T)`` over the layer's bias-augmented inputs on ``calib``.

    ``calib`` is an iterable of ``(inputs, targets)`` batches; ``max_samples`` caps the input rows used.
    """
    layers = {f: f.rpartition(".")[0] for f in fqns}
    for mf in layers.values():
        _check_layer(model.get_submodule(mf))
    cal = collect(model, calib, gram=list(layers.values()), gram_bias=True, max_rows=max_samples)
    empty = [f for f, mf in layers.items() if not cal.gram_rows.get(mf)]
    if empty:
        raise ConfigError(f"calib gave no inputs to {empty}; pass calib=[(inputs, targets), ...] batches that reach "
                          "those layers")
    return {f: cal.hessian(mf) for f, mf in layers.items()}


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


def layer_output_error(weight: torch.Tensor, bias: torch.Tensor | None, new_weight: torch.Tensor,
                       new_bias: torch.Tensor | None, h: torch.Tensor) -> float:
    """The layer-wise error ``1/(2n) ||Y' - Y||^2 = 1/2 sum_rows d^T H d`` of replacing (w, b) by (w', b').

    Example:
        >>> h = torch.eye(3, dtype=torch.float64)            # two whitened inputs and the bias column
        >>> layer_output_error(torch.ones(1, 2), None, torch.tensor([[1.0, 0.0]]), None, h)
        0.5
    """
    d = view2d(new_weight.detach()).double() - view2d(weight.detach()).double()
    db = (new_bias.detach().double() - bias.detach().double()) if bias is not None else d.new_zeros(d.shape[0])
    da = torch.cat([d, db.reshape(-1, 1)], dim=1)
    return float(0.5 * ((da @ h.double()) * da).sum())


@dataclass(frozen=True)
class LOBSConfig(MethodConfig):
    max_samples: int = option(10000, ge=1)  # input rows per layer for H (entry's small-scale check: 10k samples)
    damp: float = option(1e-5, gt=0)  # H + damp * mean(diag H) * I (the paper's recursion starts from 1e6 * I)
    exempt: tuple[Literal["first", "last"], ...] = ()  # ours: keep the first / last layer dense


@register_method("l-obs", config=LOBSConfig, kind="unstructured", needs=("calib",),
                 telemetry=Telemetry(
                     keys=("layer_sparsity", "layer_error_zeroed", "layer_error_obs"),
                     engaged=lambda t: t["layer_error_obs"] < t["layer_error_zeroed"],
                     what="the OBS update of the surviving weights lowering the layer-wise error below zeroing",
                     knob="the survivors compensate only through correlated layer inputs: pass calibration "
                          "batches of real training inputs (calib, options.max_samples)"))
def run_l_obs(ctx: RunContext, cfg: LOBSConfig) -> MethodResult:
    """One-shot L-OBS: every layer pruned to the target sparsity with OBS corrections; fine-tune afterwards."""
    params = prunable_weights(ctx.model, ctx.ignore, cfg.exempt, recurrent=False)
    hs = layer_hessians(ctx.model, list(params), ctx.calib, max_samples=cfg.max_samples)
    masks, err_zero, err_obs = {}, 0.0, 0.0
    for fqn in params:
        module = ctx.model.get_submodule(fqn.rpartition(".")[0])
        bias = getattr(module, "bias", None)
        w, b, masks[fqn] = obs_prune_layer(module.weight, bias, hs[fqn], ctx.target_value, damp=cfg.damp)
        err_zero += layer_output_error(module.weight, bias, module.weight * masks[fqn], bias, hs[fqn])
        err_obs += layer_output_error(module.weight, bias, w, b, hs[fqn])
        with torch.no_grad():  # the harness restores the model if a later layer fails
            module.weight.copy_(w)
            if b is not None:
                bias.copy_(b)
    install_masks_(ctx.model, masks, mode="hard")
    numel = sum(m.numel() for m in masks.values())
    layer_sparsity = {f: 1 - int(m.sum()) / m.numel() for f, m in masks.items()}
    return MethodResult(ctx.model, info={"sparsity": 1 - sum(int(m.sum()) for m in masks.values()) / numel},
                        telemetry={"layer_sparsity": layer_sparsity, "layer_error_zeroed": err_zero,
                                   "layer_error_obs": err_obs})
