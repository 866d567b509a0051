"""SNIP: single-shot pruning at initialisation by connection sensitivity.

Paper: "SNIP: Single-shot Network Pruning based on Connection Sensitivity", Namhoon Lee, Thalaiyasingam
Ajanthan, Philip H. S. Torr. ICLR 2019. https://arxiv.org/abs/1810.02340

Before any training, imagine a gate multiplying every weight and ask how strongly the loss on one batch
reacts to each gate at the value 1: that derivative is the weight times its gradient. Normalised over the
network, its absolute value is the connection's sensitivity; the most sensitive connections across all
layers are kept and the rest removed once, at initialisation, and the sparse network is then trained as
usual with its mask fixed. The batch goes through the network as it would in training (BatchNorm on the
batch's statistics, dropout active). No pre-training, no schedule and no per-layer ratios are needed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..masks import connection_sensitivity, get_masks, prunable_weights, sparsify_
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

__all__ = ["SNIPConfig", "run_snip", "magnitude_overlap"]


@dataclass(frozen=True)
class SNIPConfig(MethodConfig):
    batches: int = option(1, ge=1)  # scoring mini-batches (paper: one batch; 100 images on MNIST)
    global_: bool = True  # one ranking over all layers (paper: keep the kappa most sensitive globally)


def magnitude_overlap(magnitudes: dict, masks: dict) -> tuple[float, int]:
    """``(fraction of kept weights that global magnitude would also keep, kept weights it would not)``.

    ``magnitudes`` are ``|w|`` before pruning; global magnitude keeps as many weights over the same layers.
    """
    kept = torch.cat([masks[f].flatten() for f in magnitudes])
    mag = torch.cat([m.flatten() for m in magnitudes.values()])
    n_keep = int(kept.sum())
    by_mag = torch.zeros_like(kept)
    by_mag[torch.topk(mag, n_keep, sorted=False).indices] = True
    both = int((kept & by_mag).sum())
    return (both / n_keep if n_keep else 1.0), n_keep - both


@register_method("snip", config=SNIPConfig, kind="unstructured", needs=("calib",),
                 telemetry=Telemetry(
                     keys=("kept_overlap_magnitude", "kept_not_by_magnitude"),
                     engaged=lambda t: t["kept_not_by_magnitude"] > 0,
                     what="connection sensitivity choosing other weights than global magnitude",
                     knob="pass calibration batches whose loss has a gradient at the pruned layers "
                          "(calib=[(inputs, targets)], raise options.batches)"))
def run_snip(ctx: RunContext, cfg: SNIPConfig) -> MethodResult:
    """Prune the (freshly initialised) ``ctx.model`` by connection sensitivity on ``ctx.calib``."""
    params = prunable_weights(ctx.model, tuple(ctx.ignore))
    scores = connection_sensitivity(ctx.model, params, list(ctx.calib)[: cfg.batches])
    magnitudes = {f: p.detach().abs().clone() for f, p in params.items()}
    report = sparsify_(ctx.model, sparsity=ctx.target_value, criterion="snip", scores=scores, allocation="global" if cfg.global_ else "uniform",
                       ignore=tuple(ctx.ignore))
    overlap, differ = magnitude_overlap(magnitudes, get_masks(ctx.model))
    return MethodResult(ctx.model, info={"sparsity": report.sparsity,
                                         "per_layer": {k: v["sparsity"] for k, v in report.layers.items()}},
                        telemetry={"kept_overlap_magnitude": overlap, "kept_not_by_magnitude": differ})
