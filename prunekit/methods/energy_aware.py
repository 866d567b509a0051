"""Energy-aware pruning: prune the layers that cost the most energy first, and restore each by least squares.

Paper: Tien-Ju Yang, Yu-Hsin Chen, Vivienne Sze, "Designing Energy-Efficient Convolutional Neural Networks
using Energy-Aware Pruning", CVPR 2017. https://arxiv.org/abs/1611.05128

The number of weights is a poor guide to the energy a network spends: moving feature maps and weights through
the memory hierarchy often costs more than the arithmetic. The paper estimates each layer's energy
(computation plus data movement, with per-access costs measured on an accelerator) and prunes layer by layer in
order of decreasing energy. Inside a layer the smallest-magnitude weights are removed, and the surviving weights
are re-fitted in closed form (least squares) so that the layer's *output feature maps* on sampled inputs stay
as close as possible to what they were; removal goes on in steps until the accuracy drop reaches a threshold,
then the next layer is visited. A global fine-tune with back-propagation follows (here the caller's shared
fine-tune; the installed masks keep the removed weights at zero). Here the energy model is the configurable
proxy :mod:`prunekit.measure.energy` (the paper's hardware mapper is left out), the accuracy drop is measured
on the calibration batches, and the sparsity target is met by raising the threshold (ours) when a pass over
every layer ends short of it; the last step removes exactly what the target still needs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..criteria.collect import collect, layer_rows
from ..graph.trace import model_device, move_to
from ..masks import install_masks_, prunable_weights
from ..measure.energy import EnergyModel, layer_energy
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["EnergyAwareConfig", "least_squares_restore", "run"]


@dataclass(frozen=True)
class EnergyAwareConfig(MethodConfig):
    order: Literal["energy", "model"] = "energy"  # sec. 4: layers sorted by estimated energy, highest first;
    # "model": module order (ours, the ablation of the ordering)
    step: float = option(0.1, gt=0, le=1)  # ours: fraction of a layer's weights removed per step (the paper's
    # step size is not given in the sources read)
    threshold: float = option(0.01, ge=0, le=1)  # accuracy drop allowed before moving to the next layer (sec. 4:
    # "until the accuracy drop reaches a threshold"; value not given, ours: 1 point)
    restore: Literal["least_squares", "none"] = "least_squares"  # sec. 4.2: closed-form re-fit of the kept
    # weights to the layer's output feature maps; "none": magnitude zeroing only (the ablation)
    max_layer_sparsity: float = option(0.95, gt=0, le=1)  # ours: no layer loses more than this fraction
    ridge: float = option(1e-6, ge=0)  # ours: ridge relative to the mean diagonal of X^T X (numerical safety)
    max_rows: int = option(8192, ge=1)  # ours: input rows per layer kept for the fit (a seeded random subset)
    cg_iters: int = option(200, ge=1)  # ours: conjugate-gradient iterations of the least-squares solve
    max_passes: int = option(8, ge=1)  # ours: passes over the layers (the threshold doubles after a pass that
    # ends short of the target; the paper iterates the whole procedure)
    # the proxy energy model (prunekit.measure.energy; costs normalised to one MAC, Eyeriss: Chen et al. 2016)
    e_dram: float = option(200.0, ge=0)  # DRAM access (Eyeriss: 200x a MAC)
    e_buffer: float = option(6.0, ge=0)  # global buffer access (Eyeriss: 6x)
    e_noc: float = option(2.0, ge=0)  # inter-PE network access (Eyeriss: 2x)
    e_rf: float = option(1.0, ge=0)  # register file access (Eyeriss: 1x)


def _rows_target(w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """The layer's weight as ``[out, d + 1]`` (bias in the last column; 0 without bias), float64."""
    w2 = w.detach().reshape(w.shape[0], -1).double()
    bias = b.detach().double() if b is not None else w2.new_zeros(w2.shape[0])
    return torch.cat([w2, bias[:, None]], 1)


def least_squares_restore(x: torch.Tensor, w_ref: torch.Tensor, keep: torch.Tensor, *, has_bias: bool,
                          ridge: float = 1e-6, iters: int = 200, tol: float = 1e-10) -> torch.Tensor:
    """Kept weights re-fitted so the layer's outputs ``X w`` stay closest to ``X w_ref`` on the recorded inputs.

    ``x``: the layer's input rows ``[n, d + 1]`` (last column ones, :func:`~prunekit.criteria.collect.layer_rows`);
    ``w_ref``: ``[out, d + 1]`` the weights (and bias) whose outputs are kept; ``keep``: ``[out, d]`` which weights
    survive. Every output unit j solves ``min ||X_S w_S - X w_ref_j||^2 + lam ||w_S - w_ref_j,S||^2`` over its
    support ``S`` (kept weights, plus the bias when the layer has one): the normal equations
    ``(G_SS + lam I) w_S = (G w_ref_j)_S + lam w_ref_j,S`` with ``G = X^T X`` -- the paper's closed form, with a
    small ridge (``ridge`` x the mean diagonal of G) for rank-deficient inputs. All units are solved together by
    conjugate gradients from the magnitude-zeroed weights (the error never rises above theirs), through ``X``
    when it has fewer rows than columns and through ``G`` otherwise. Returns ``[out, d + 1]``, 0 off the support.
    """
    x = x.double()
    w_ref = w_ref.double()
    m = torch.cat([keep.reshape(keep.shape[0], -1).bool(),
                   torch.full((keep.shape[0], 1), has_bias, dtype=torch.bool)], 1).double()
    use_rows = x.shape[0] < x.shape[1]
    g = None if use_rows else x.T @ x
    diag = (x * x).sum(0) if use_rows else torch.diagonal(g)
    lam = ridge * float(diag.mean().clamp_min(1e-30))

    def gram_times(v):  # v G, row by row
        return (v @ x.T) @ x if use_rows else v @ g

    def a(v):  # the normal-equation operator restricted to each unit's support (identity off it)
        return m * gram_times(m * v) + lam * m * v + (1 - m) * v

    b = m * gram_times(w_ref) + lam * m * w_ref
    w = w_ref * m
    r = b - a(w)
    p = r.clone()
    rs = (r * r).sum(1, keepdim=True)
    scale = float((b * b).sum().clamp_min(1e-300))
    for _ in range(iters):
        if float(rs.sum()) <= tol * scale:
            break
        ap = a(p)
        alpha = rs / (p * ap).sum(1, keepdim=True).clamp_min(1e-300)
        w = w + alpha * p
        r = r - alpha * ap
        rs_new = (r * r).sum(1, keepdim=True)
        p = r + (rs_new / rs.clamp_min(1e-300)) * p
        rs = rs_new
    return w * m


def _output_mse(x: torch.Tensor, w: torch.Tensor, w_ref: torch.Tensor) -> float:
    """Mean squared difference of the layer's outputs ``X w^T`` and ``X w_ref^T`` over rows and units."""
    return float((x.double() @ (w - w_ref).double().T).pow(2).mean())


@torch.no_grad()
def _accuracy(model: nn.Module, batches) -> float:
    was = model.training
    model.eval()
    dev = model_device(model)
    hit = n = 0
    try:
        for x, y in batches:
            out = model(move_to(x, dev))
            hit += int((out.argmax(1).cpu() == y.cpu()).sum())
            n += len(y)
    finally:
        model.train(was)
    return hit / max(n, 1)


def _layer_rows(model: nn.Module, name: str, mod: nn.Module, calib, max_rows: int, seed: int) -> torch.Tensor:
    """The layer's input rows ``[n, d + 1]`` on the calibration batches (at most ``max_rows``, seeded subset)."""
    cal = collect(model, calib, inputs=[name])
    x = torch.cat([layer_rows(mod, t, bias=True) for t in cal.inputs[name]])
    if x.shape[0] > max_rows:
        x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:max_rows]]
    return x


def _engaged(t: dict) -> bool:
    return t["layers_pruned"] >= 1 and t["reconstruction_error_drop"] > 0


@register_method(
    "energy-aware", config=EnergyAwareConfig, kind="unstructured", needs=("calib",), status="partial",
    smoke={"max_rows": 512, "step": 0.25},
    left_out="the paper's hardware energy estimator (the Eyeriss mapper counting accesses per dataflow): a "
             "configurable proxy (prunekit.measure.energy) with the paper's per-access costs counts the accesses; "
             "the accuracy drop is measured on the calibration batches; the global fine-tune is the caller's",
    telemetry=Telemetry(
        keys=("layers_pruned", "visit_order", "energy_before", "energy_after", "energy_removed",
              "reconstruction_error_drop", "threshold_raises"),
        engaged=_engaged,
        what="energy-ordered magnitude pruning with the least-squares restore of each layer's outputs",
        knob="set options.restore='least_squares' and ask for a target sparsity > 0 (options.step is the "
             "fraction removed per step)"))
def run(ctx: RunContext, cfg: EnergyAwareConfig) -> MethodResult:
    model = ctx.model
    em = EnergyModel(dram=cfg.e_dram, buffer=cfg.e_buffer, noc=cfg.e_noc, rf=cfg.e_rf)
    params = prunable_weights(model, ctx.ignore, (), recurrent=False)
    layer_of = {f: f.rpartition(".")[0] for f in params}
    before = layer_energy(model, ctx.example_inputs, em)
    order = list(params)
    if cfg.order == "energy":
        order.sort(key=lambda f: -before[layer_of[f]].total if layer_of[f] in before else 0.0)
    numel = sum(p.numel() for p in params.values())
    goal = int(round(ctx.target_value * numel))
    keep = {f: torch.ones_like(p, dtype=torch.bool) for f, p in params.items()}
    base_acc = _accuracy(model, ctx.calib)
    threshold, raises, removed = cfg.threshold, 0, 0
    history, drops = [], []
    for _ in range(cfg.max_passes):
        if removed >= goal:
            break
        for f in order:
            if removed >= goal:
                break
            removed, steps = _prune_layer(model, f, params[f], keep, removed, goal, base_acc, threshold, cfg, ctx,
                                          drops)
            if steps:
                history.append({"layer": layer_of[f], "steps": steps, "sparsity": float(1 - keep[f].float().mean()),
                                "threshold": threshold})
        if removed < goal:  # a pass ended short of the target: allow a larger drop on the next (ours)
            threshold, raises = (threshold * 2 if threshold > 0 else 0.01), raises + 1
    if removed < goal:
        log.warning("energy-aware: %d of %d weights removed after %d passes; raise options.max_passes or "
                    "options.max_layer_sparsity", removed, goal, cfg.max_passes)
    install_masks_(model, {f: keep[f] for f in params}, mode="hard")
    after = layer_energy(model, ctx.example_inputs, em)
    e0, e1 = sum(e.total for e in before.values()), sum(e.total for e in after.values())
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    telemetry = {
        "layers_pruned": sum(1 for f in params if not bool(keep[f].all())),
        "visit_order": [layer_of[f] for f in order], "energy_before": e0, "energy_after": e1,
        "energy_removed": 1 - e1 / e0 if e0 else 0.0,
        "reconstruction_error_drop": mean([d["drop"] for d in drops]), "threshold_raises": raises}
    info = {"sparsity": removed / numel, "base_calib_accuracy": base_acc,
            "final_calib_accuracy": _accuracy(model, ctx.calib), "visits": history, "steps": drops,
            "layer_energy_before": {k: v.to_dict() for k, v in before.items()},
            "layer_energy_after": {k: v.to_dict() for k, v in after.items()}}
    return MethodResult(model, info=info, telemetry=telemetry)


def _prune_layer(model, f, weight, keep, removed, goal, base_acc, threshold, cfg, ctx, drops) -> tuple[int, int]:
    """Visit layer ``f``: remove ``step`` of its weights at a time by magnitude, restore the rest by least squares,
    stop when the calibration accuracy drops more than ``threshold`` (that step is undone) or the layer is at its
    cap or the target is met. Returns (weights removed overall, steps kept)."""
    mod = model.get_submodule(f.rpartition(".")[0])
    name = f.rpartition(".")[0]
    x = _layer_rows(model, name, mod, ctx.calib, cfg.max_rows, ctx.seed)
    w_ref = _rows_target(weight, mod.bias)  # the layer's outputs at the start of its visit are kept
    n, steps = weight.numel(), 0
    cap = int(cfg.max_layer_sparsity * n)
    while removed < goal:
        have = n - int(keep[f].sum())
        k = min(max(1, int(round(cfg.step * n))), cap - have, goal - removed)
        if k <= 0:
            break
        saved_w = weight.detach().clone()
        saved_b = mod.bias.detach().clone() if mod.bias is not None else None
        saved_keep = keep[f].clone()
        mag = weight.detach().abs().masked_fill(~keep[f], float("inf")).flatten()
        cut = torch.topk(mag, k, largest=False).indices
        new_keep = keep[f].flatten().clone()
        new_keep[cut] = False
        new_keep = new_keep.reshape(weight.shape)
        zeroed = _rows_target(weight * new_keep, mod.bias)
        mse_zero = _output_mse(x, zeroed, w_ref)
        if cfg.restore == "least_squares":
            fit = least_squares_restore(x, w_ref, new_keep, has_bias=mod.bias is not None, ridge=cfg.ridge,
                                        iters=cfg.cg_iters)
        else:
            fit = zeroed
        mse_fit = _output_mse(x, fit, w_ref)
        with torch.no_grad():
            weight.copy_(fit[:, :-1].reshape(weight.shape).to(weight))
            if mod.bias is not None:
                mod.bias.copy_(fit[:, -1].to(mod.bias))
        keep[f] = new_keep
        acc = _accuracy(model, ctx.calib)
        if base_acc - acc > threshold:  # this step went too far: undo it and leave the layer
            with torch.no_grad():
                weight.copy_(saved_w)
                if saved_b is not None:
                    mod.bias.copy_(saved_b)
            keep[f] = saved_keep
            break
        removed += k
        steps += 1
        drops.append({"layer": name, "removed": k, "mse_magnitude": mse_zero, "mse_restored": mse_fit,
                      "drop": (mse_zero - mse_fit) / mse_zero if mse_zero > 0 else 0.0, "accuracy": acc})
    return removed, steps
