"""Net-Trim: the sparsest weights that keep every layer's responses, found by a convex program per layer.

Paper: Alireza Aghasi, Afshin Abdi, Nam Nguyen, Justin Romberg, "Net-Trim: Convex Pruning of Deep Neural
Networks with Performance Guarantee", NeurIPS 2017. https://arxiv.org/abs/1611.05162

A trained network is pruned after training, one layer at a time, from the layer's inputs and responses recorded
on training samples. For a layer followed by a ReLU, Net-Trim looks for the weights with the smallest l1 norm
that (a) reproduce the responses where they are positive within a tolerance epsilon and (b) keep the unit off
where it was off; the program is convex and separates into one small problem per output unit, and the l1
objective leaves most weights exactly zero. In the parallel form every layer is fitted to the original inputs;
in the cascade form a layer reads the outputs of the layers already trimmed, with a tolerance that absorbs the
error they pass on (gamma times the error of the untouched weights on those inputs). The sparsity of each layer
follows from epsilon; no retraining is required. Here the program is solved by ADMM
(:mod:`prunekit.criteria.convex`), epsilon is relative to each unit's response norm (the entry's "2% relative
output error"), a layer not followed by a ReLU (the classifier, a conv before a BatchNorm) gets the linear form
(responses reproduced everywhere), and the result is kept as masks over plain weights. A target sparsity is met
only with ``steer="epsilon"`` (ours): one epsilon for all layers found by bisection so the program alone removes
at most the target, then the smallest surviving weights are removed to meet it exactly (reported as top-up).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..criteria.convex import sparse_relu_fit
from ..errors import ConfigError
from ..graph.trace import model_device, move_to
from ..masks import install_masks_, prunable_weights
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["NetTrimConfig", "record_layer", "trim_layer", "run"]


@dataclass(frozen=True)
class NetTrimConfig(MethodConfig):
    epsilon: float = option(0.02, ge=0)  # relative response error allowed per unit (entry's check: 2%; paper: eps)
    form: Literal["cascade", "parallel"] = "cascade"  # sec. 3: parallel / cascade; supplementary runs use cascade
    gamma: float = option(1.1, ge=1)  # cascade: eps >= gamma * error of the untouched weights (supplementary: 1.1)
    max_samples: int = option(5000, ge=1)  # input rows per layer (entry's small-scale check: 5,000 samples)
    iters: int = option(400, ge=1)  # ADMM iterations per layer (ours: budget; the paper runs ADMM to tolerance)
    rho: float = option(5.0, gt=0)  # ADMM penalty (Net-Trim-v1 main.py: rho = 5)
    alpha: float = option(1.8, gt=0, lt=2)  # ADMM over-relaxation (Net-Trim-v1 main.py: alpha = 1.8)
    steer: Literal["none", "epsilon"] = "none"  # ours: "epsilon" bisects epsilon to meet the target sparsity
    search_steps: int = option(8, ge=1)  # ours: bisection steps of steer="epsilon"


@torch.no_grad()
def _rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows the layer multiplies by its 2-D weight view, with a trailing 1 for the bias: ``[n, d + 1]``."""
    if isinstance(module, nn.Linear):
        rows = x.reshape(-1, x.shape[-1])
    elif isinstance(module, nn.Conv2d):
        if module.groups != 1 or isinstance(module.padding, str):
            raise ConfigError(f"net-trim supports Conv2d with groups=1 and numeric padding; a layer has "
                              f"groups={module.groups}, padding={module.padding!r}: ignore it (ignore=[...])")
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
        rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    else:
        raise ConfigError(f"net-trim handles Linear and Conv2d layers, not {type(module).__name__}; ignore it")
    return torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1).float()


@torch.no_grad()
def record_layer(model: nn.Module, fqn: str, calib, max_samples: int, seed: int) -> tuple[torch.Tensor, bool]:
    """Input rows ``[n, d + 1]`` of layer ``fqn`` (weight FQN) on ``calib`` (at most ``max_samples``, a seeded random
    subset), and whether its output goes straight into an ``nn.ReLU`` module."""
    module = model.get_submodule(fqn.rpartition(".")[0])
    rows, outs, relu_in = [], [], []  # the tensors themselves: ids of freed tensors are reused
    handles = [module.register_forward_pre_hook(lambda m, a: rows.append(_rows(m, a[0].detach()))),
               module.register_forward_hook(lambda m, a, o: outs.append(o))]
    handles += [m.register_forward_pre_hook(lambda m, a: relu_in.append(a[0]))
                for m in model.modules() if isinstance(m, nn.ReLU)]
    was_training = model.training
    model.eval()
    feeds_relu = True
    try:
        for inputs, _ in calib:
            outs.clear()
            relu_in.clear()
            model(move_to(inputs, model_device(model)))
            feeds_relu = feeds_relu and bool(outs) and all(any(o is r for r in relu_in) for o in outs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if not rows:
        raise ConfigError(f"calib gave no inputs to {fqn!r}; pass calib=[(inputs, targets), ...] batches that reach it")
    x = torch.cat(rows)
    if x.shape[0] > max_samples:
        x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:max_samples]]
    return x, feeds_relu


def _augmented(module: nn.Module) -> torch.Tensor:
    w = module.weight.detach().reshape(module.weight.shape[0], -1).float()
    b = module.bias.detach().float() if module.bias is not None else w.new_zeros(w.shape[0])
    return torch.cat([w, b[:, None]], dim=1).T  # [d + 1, m]


def trim_layer(module: nn.Module, x: torch.Tensor, x_hat: torch.Tensor, relu: bool, epsilon: float,
               cfg: NetTrimConfig) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """Net-Trim's program for one layer: responses recorded on ``x`` (original inputs), fitted on ``x_hat`` (the
    same samples through the trimmed layers before it; ``x_hat is x`` in the parallel form).

    Returns (weight, bias, stats) with ``stats``: relative error achieved and allowed, the largest off-constraint
    violation relative to the response scale, and the fraction of weights the program set to zero.
    """
    w_aug = _augmented(module)
    pre = x @ w_aug  # [n, m] the responses before the activation
    has_bias = module.bias is not None
    if relu:
        y, on = pre.clamp_min(0), pre > 0
    else:
        y, on = pre, torch.ones_like(pre, dtype=torch.bool)
    y_norm = torch.where(on, y, torch.zeros_like(y)).norm(dim=0)
    eps = epsilon * y_norm
    ub = torch.zeros_like(y)
    if x_hat is not x:  # cascade: the untouched weights on the trimmed inputs stay feasible
        inherited = x_hat @ w_aug
        eps = torch.maximum(eps, cfg.gamma * torch.where(on, inherited - y, torch.zeros_like(y)).norm(dim=0))
        if relu:
            ub = torch.where(on, ub, inherited.clamp_min(0))
    fit = sparse_relu_fit(x_hat if has_bias else x_hat[:, :-1], y, eps, on=on, ub=ub, unpenalised=int(has_bias),
                          iters=cfg.iters, rho=cfg.rho, alpha=cfg.alpha, w0=w_aug if has_bias else w_aug[:-1])
    u = fit.weight
    weight = u[: u.shape[0] - int(has_bias)].T.reshape(module.weight.shape).to(module.weight.dtype)
    bias = u[-1].to(module.bias.dtype) if has_bias else None
    total = float(y_norm.norm().clamp_min(1e-30))
    scale = float(y.abs().max().clamp_min(1e-30))
    stats = {"error": float(fit.error.norm()) / total, "epsilon": float(eps.norm()) / total,
             "off_violation": float(fit.off_violation.max()) / scale if fit.off_violation.numel() else 0.0,
             "sparsity": float((weight == 0).float().mean()), "iters": fit.iters, "relu": relu}
    return weight, bias, stats


def _trim_all(model: nn.Module, params: dict, calib, epsilon: float, cfg: NetTrimConfig, seed: int,
              originals: dict) -> dict:
    """Trim every layer at ``epsilon`` (the model's layers are overwritten); ``{fqn: stats}`` in model order."""
    stats = {}
    for fqn in params:
        module = model.get_submodule(fqn.rpartition(".")[0])
        x, relu = originals[fqn]
        x_hat = x if cfg.form == "parallel" else record_layer(model, fqn, calib, cfg.max_samples, seed)[0]
        weight, bias, stats[fqn] = trim_layer(module, x, x_hat, relu, epsilon, cfg)
        with torch.no_grad():  # the harness restores the model if anything fails
            module.weight.copy_(weight)
            if bias is not None:
                module.bias.copy_(bias)
    return stats


def _sparsity(params: dict) -> float:
    return sum(int((p == 0).sum()) for p in params.values()) / sum(p.numel() for p in params.values())


def _engaged(t: dict) -> bool:
    return t["program_sparsity"] > 0


@register_method("net-trim", config=NetTrimConfig, kind="unstructured", needs=("calib",),
                 smoke={"iters": 30, "max_samples": 256, "steer": "epsilon", "search_steps": 2, "form": "parallel"},
                 telemetry=Telemetry(
                     keys=("layer_error", "layer_epsilon", "layer_sparsity", "program_sparsity", "topped_up"),
                     engaged=_engaged,
                     what="weights removed by the l1 program within the response tolerance",
                     knob="raise options.epsilon (relative response error allowed per unit; 0 asks for the "
                          "responses exactly) or options.iters"))
def run(ctx: RunContext, cfg: NetTrimConfig) -> MethodResult:
    """Net-Trim after training: each layer refitted by its convex program; masks keep the zeros."""
    model = ctx.model
    params = prunable_weights(model, ctx.ignore, (), recurrent=False)
    originals = {f: record_layer(model, f, ctx.calib, cfg.max_samples, ctx.seed) for f in params}
    dense = {f: model.get_submodule(f.rpartition(".")[0]).state_dict() for f in params}
    dense = {f: {k: v.clone() for k, v in d.items()} for f, d in dense.items()}
    epsilon, searched = cfg.epsilon, []
    if cfg.steer == "epsilon":  # ours: one epsilon for every layer, the largest whose program stays <= target
        lo, hi = 1e-4, 1.0
        for _ in range(cfg.search_steps):
            mid = math.sqrt(lo * hi)
            _trim_all(model, params, ctx.calib, mid, cfg, ctx.seed, originals)
            s = _sparsity(params)
            searched.append({"epsilon": mid, "sparsity": s})
            lo, hi = (mid, hi) if s <= ctx.target_value else (lo, mid)
            for f in params:
                model.get_submodule(f.rpartition(".")[0]).load_state_dict(dense[f])
        epsilon = lo
    stats = _trim_all(model, params, ctx.calib, epsilon, cfg, ctx.seed, originals)
    program_sparsity = _sparsity(params)
    masks = {f: p.detach() != 0 for f, p in params.items()}
    topped = 0
    if cfg.steer == "epsilon":  # ours: the smallest surviving weights go until the target is met exactly
        numel = sum(p.numel() for p in params.values())
        need = round(ctx.target_value * numel) - sum(int((~m).sum()) for m in masks.values())
        if need > 0:
            flat = torch.cat([p.detach().abs().flatten().where(masks[f].flatten(), torch.tensor(float("inf")))
                              for f, p in params.items()])
            cut = torch.zeros(numel, dtype=torch.bool)
            cut[torch.topk(flat, need, largest=False).indices] = True
            offset = 0
            for f, m in masks.items():
                masks[f] = m & ~cut[offset: offset + m.numel()].reshape(m.shape)
                offset += m.numel()
            topped = need
    elif program_sparsity < ctx.target_value:
        log.warning("net-trim: the program at epsilon=%g removed %.3f of the weights, the target asked %.3f; "
                    "raise options.epsilon or set options.steer='epsilon'", epsilon, program_sparsity,
                    ctx.target_value)
    install_masks_(model, masks, mode="hard")
    numel = sum(m.numel() for m in masks.values())
    sparsity = 1 - sum(int(m.sum()) for m in masks.values()) / numel
    telemetry = {"layer_error": {f: s["error"] for f, s in stats.items()},
                 "layer_epsilon": {f: s["epsilon"] for f, s in stats.items()},
                 "layer_sparsity": {f: s["sparsity"] for f, s in stats.items()},
                 "program_sparsity": program_sparsity, "topped_up": topped / numel}
    return MethodResult(model, info={"sparsity": sparsity, "epsilon": epsilon, "form": cfg.form, "steer": cfg.steer,
                                     "search": searched, "layers": stats}, telemetry=telemetry)
