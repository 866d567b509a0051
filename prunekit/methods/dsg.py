"""DSG: dynamic sparse graph, per-input output channels chosen by a cheap random-projection estimate.

Paper: Liu Liu, Lei Deng, Xing Hu, Maohua Zhu, Guoqi Li, Yufei Ding, Yuan Xie, "Dynamic Sparse Graph for
Efficient Deep Learning", ICLR 2019. https://arxiv.org/abs/1810.00859

At every step, in training and at inference, each layer computes only a few of its outputs, chosen for this
input. To choose them without computing them, DSG projects the layer's input and weights to a low dimension
with a sparse random (Johnson-Lindenstrauss) matrix, whose products approximate the real pre-activations
(dimension-reduction search); the outputs with the largest estimates are kept and computed exactly, the rest are
zero, and the same mask is used in back-propagation. Because BatchNorm re-centres its input, a zero output
would come back non-zero after BN; DSG masks again after BN (double-mask selection) so the sparsity survives.
Here the projection acts on the input channels (the same matrix at every kernel offset), the selection is per
output channel with the estimate's mean activation after BN and ReLU as the score, the keep ratio is the
largest uniform one meeting the executed-MACs target (the estimate's own MACs included), and the gated model
runs only its kept channels (:mod:`prunekit.surgery.dynamic`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..surgery.dynamic import DRS, gate_convs_, gated_units, set_keep_
from ..train import fit
from ..train.config import method_train_config
from ._config import MethodConfig, option
from ._dynamic import (DYNAMIC_TARGETS, DenseCost, fit_density, gate_candidates, keep_count, macs_stats,
                       varying_fraction)
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["DSGConfig", "run", "selection_overlap"]


@dataclass(frozen=True)
class DSGConfig(MethodConfig):
    # kept fraction of outputs per layer (paper: 1 - sparsity, 50-90% sparsity); None: from the target (ours)
    keep: float | None = option(None, gt=0, le=1)
    # projected dimension / input dimension (paper: not found; the entry's check uses 30%)
    projection: float = option(0.3, gt=0, le=1)
    skip_first: bool = True  # ours: the first conv reads the image (1-3 channels) and stays dense


def selection_overlap(exact: torch.Tensor, estimate: torch.Tensor, k: int) -> float:
    """Mean over rows of |top-k(exact) & top-k(estimate)| / k: how well the estimate finds the real winners."""
    a = torch.zeros_like(exact, dtype=torch.bool).scatter_(1, exact.topk(k, 1).indices, True)
    b = torch.zeros_like(estimate, dtype=torch.bool).scatter_(1, estimate.topk(k, 1).indices, True)
    return float((a & b).sum(1).float().mean() / k)


@register_method(
    "dsg", config=DSGConfig, kind="other", needs=("train",), status="partial", **DYNAMIC_TARGETS,
    left_out="selection is per output channel with one projection over input channels (the paper also selects "
             "neurons of FC layers and projects whole patches); memory savings of training are not measured",
    telemetry=Telemetry(keys=("keep", "macs_mean", "macs_std", "varying", "steps"),
                        engaged=lambda t: t["keep"] < 1 and t["varying"] > 0,
                        what="per-input output selection by dimension-reduction search",
                        knob="lower the target or options.keep below 1"),
    smoke={})
def run(ctx: RunContext, cfg: DSGConfig) -> MethodResult:
    target = float(ctx.target_value)  # executed MACs per input kept (a macs= target: the harness checks)
    model = ctx.model
    x = ctx.example_inputs
    pairs = gate_candidates(model, x, ctx.ignore, cfg.skip_first)
    cost = DenseCost(model, x, [c for c, _ in pairs])
    gate_convs_(model, pairs, DRS, lambda fqn, conv: [conv.out_channels,
                                                      max(1, round(cfg.projection * conv.in_channels)), ctx.seed])
    units = list(gated_units(model).values())

    def set_density(d):
        for u in units:
            set_keep_(u, keep_count(d, u.conv.out_channels))

    calib = ctx.calib or ctx.train_data
    keep = fit_density(model, cost, calib, target, set_density) if cfg.keep is None else cfg.keep
    set_density(keep)
    steps = fit(model, ctx.train_data, method_train_config(ctx)).steps if ctx.prune_epochs > 0 else 0
    model.eval()
    stats = macs_stats(model, cost, ctx.val_data or calib)
    telemetry = {"keep": keep, **stats, "varying": varying_fraction(model, ctx.val_data or calib), "steps": int(steps)}
    log.info("dsg: keep=%.3f, executed MACs %.3f +- %.3f of dense", keep, stats["macs_mean"], stats["macs_std"])
    return MethodResult(model=model, info={"gated": [c for c, _ in pairs], "dense_macs": cost.total},
                        telemetry=telemetry)
