"""Channel pruning by LASSO selection and least-squares reconstruction of the next layer.

Paper: Yihui He, Xiangyu Zhang, Jian Sun, "Channel Pruning for Accelerating Very Deep Neural Networks",
ICCV 2017. https://arxiv.org/abs/1707.06168

To thin the input channels of a layer, the paper samples its inputs and outputs, solves a LASSO over one
coefficient per input channel (raising the penalty until only the wanted number stay non-zero) and then
re-fits the layer's weights on the kept channels by least squares, with inputs taken from the already
pruned network and targets from the original one so errors do not pile up. Removing an input channel
removes the filter producing it. Here the ``cp-lasso`` criterion ranks channels by how long they survive
along the LASSO path, the engine cuts the same fraction per layer to meet the MAC/parameter target, and
every layer whose inputs were cut is re-fitted by least squares (``refit="full"``) to its outputs recorded
on the unpruned network. Left out: the layer-by-layer order (all layers are selected on the unpruned
network and cut at once) and the "3C" combination with factorisations.
"""
from __future__ import annotations

from ._registry import MethodResult, RunContext, get_method, register_method
from .l1_filter import _choice, check_context
from .thinet import prune_and_refit

DEFAULTS = {
    "allocation": "uniform",  # per-layer ratios were hand-set in the paper; uniform meets a target
    "refit": "full",  # least squares on the kept weights of every re-fitted layer
}


@register_method("cp-lasso", kind="structured", status="partial", defaults=DEFAULTS, needs_data=True,
                 left_out="sequential layer-by-layer selection (all layers are selected on the unpruned network "
                          "and cut at once, then re-fitted) and the 3C combination with factorisations")
def run(ctx: RunContext) -> MethodResult:
    opts = get_method("cp-lasso").options(ctx.options)
    _choice("cp-lasso", "allocation", opts["allocation"], ("uniform", "global"))
    _choice("cp-lasso", "refit", opts["refit"], ("full", "scale", "none"))
    check_context(ctx, "cp-lasso", needs_calib=True)
    info = prune_and_refit(ctx, "cp-lasso", "cp-lasso", opts["allocation"], opts["refit"])
    return MethodResult(model=ctx.model, info={"criterion": "cp-lasso", **opts, **info})
