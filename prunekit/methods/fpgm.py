"""FPGM, one-shot: remove the filters nearest the geometric median of their layer.

Paper: Yang He, Ping Liu, Ziwei Wang, Zhilan Hu, Yi Yang, "Filter Pruning via Geometric Median for Deep
Convolutional Neural Networks Acceleration", CVPR 2019. https://arxiv.org/abs/1811.00250

The paper questions "smaller norm, less important": a filter that the other filters of its layer can
replace is redundant whatever its norm, and the filters closest to the layer's geometric median are the
most replaceable. Its fast form scores each filter by the sum of its distances to all others and removes
the smallest sums, the same fraction in every layer. The paper applies this inside soft filter pruning
(re-selected every epoch while training; that schedule is the ``sfp`` method with ``criterion="fpgm"``);
this module is the one-shot use on a trained model: one cut to the MAC/parameter target through the
engine, scored on the producing filters' own weights, then the shared fine-tune.
"""
from __future__ import annotations

from ._registry import MethodResult, RunContext, get_method, register_method
from .l1_filter import _choice, check_context, prune_with_criterion

DEFAULTS = {
    "allocation": "uniform",  # the paper prunes the same fraction of every layer
    "reduce": "producer",  # distances between the producing filters
}


@register_method("fpgm", kind="structured", defaults=DEFAULTS, needs_data=False)
def run(ctx: RunContext) -> MethodResult:
    opts = get_method("fpgm").options(ctx.options)
    _choice("fpgm", "allocation", opts["allocation"], ("uniform", "global"))
    _choice("fpgm", "reduce", opts["reduce"], ("group", "producer"))
    check_context(ctx, "fpgm", needs_calib=False)
    rep = prune_with_criterion(ctx, "fpgm", "fpgm", allocation=opts["allocation"], reduce=opts["reduce"],
                               calib_needed=False)
    return MethodResult(model=ctx.model, info={"criterion": "fpgm", **opts, "engine_report": rep})
