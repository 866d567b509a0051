"""SNIP: single-shot pruning at initialisation by connection sensitivity.

Paper: "SNIP: Single-shot Network Pruning based on Connection Sensitivity", Namhoon Lee, Thalaiyasingam
Ajanthan, Philip H. S. Torr. ICLR 2019. https://arxiv.org/abs/1810.02340

Before any training, imagine a gate multiplying every weight and ask how strongly the loss on one batch
reacts to each gate at the value 1: that derivative is the weight times its gradient. Normalised over the
network, its absolute value is the connection's sensitivity; the most sensitive connections across all
layers are kept and the rest removed once, at initialisation, and the sparse network is then trained as
usual with its mask fixed. No pre-training, no schedule and no per-layer ratios are needed.
"""
from __future__ import annotations

from ..errors import ConfigError
from ..masks import sparsify_
from ..train.rewind import method_options, target_sparsity
from ._registry import MethodResult, RunContext, register_method

__all__ = ["run_snip"]


@register_method("snip", kind="unstructured", needs_data=True, defaults={
    "batches": 1,  # scoring batches (paper: one batch, 100 images on MNIST)
    "global_": True,  # paper: one ranking over all layers
})
def run_snip(ctx: RunContext) -> MethodResult:
    """Prune the (freshly initialised) ``ctx.model`` by connection sensitivity on ``ctx.calib``."""
    opts = method_options("snip", ctx.options)
    sparsity = target_sparsity(ctx.target, "snip")
    if not ctx.calib:
        raise ConfigError("snip scores weights on calibration batches; pass calib=[(inputs, targets), ...]")
    calib = list(ctx.calib)[: opts["batches"]]
    report = sparsify_(ctx.model, sparsity=sparsity, criterion="snip", calib=calib, global_=opts["global_"],
                       ignore=tuple(ctx.ignore))
    return MethodResult(ctx.model, callbacks=[], info={"sparsity": report.sparsity,
                                                       "per_layer": {k: v["sparsity"] for k, v in report.layers.items()}})
