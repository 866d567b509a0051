"""HRank: remove the filters whose output feature maps have the lowest average rank.

Paper: Mingbao Lin, Rongrong Ji, Yan Wang, Yichen Zhang, Baochang Zhang, Yonghong Tian, Ling Shao, "HRank:
Filter Pruning using High-Rank Feature Map", CVPR 2020. https://arxiv.org/abs/2002.10179

The paper finds that the matrix rank of a filter's feature map barely changes from image to image, so a
few batches are enough to estimate it, and that low-rank maps carry little information: their filters
can go. Each layer is cut at a hand-set rate, layer after layer with fine-tuning in between. Here the
``hrank`` criterion averages the rank of each channel's map (as the next layer reads it, after BN/ReLU)
over the calibration batches; the engine removes the same fraction per layer, found so that the
MAC/parameter target is met (``per_layer`` rates can be given instead), and the shared fine-tune follows.
"""
from __future__ import annotations

from ._registry import MethodResult, RunContext, get_method, register_method
from .l1_filter import _choice, check_context, prune_with_criterion

DEFAULTS = {
    "allocation": "uniform",  # the paper's per-layer rates are hand-set; uniform meets a target
    "per_layer": None,  # {module fqn: sparsity} to reproduce hand-set rates instead of a target
}


@register_method("hrank", kind="structured", status="partial", defaults=DEFAULTS, needs_data=True,
                 left_out="the layer-by-layer schedule with a fine-tune after each layer: all layers are cut "
                          "at once, then the shared fine-tune runs")
def run(ctx: RunContext) -> MethodResult:
    opts = get_method("hrank").options(ctx.options)
    _choice("hrank", "allocation", opts["allocation"], ("uniform", "global"))
    check_context(ctx, "hrank", needs_calib=True)
    rep = prune_with_criterion(ctx, "hrank", "hrank", allocation=opts["allocation"], reduce="group",
                               per_layer=opts["per_layer"])
    return MethodResult(model=ctx.model, info={"criterion": "hrank", **opts, "engine_report": rep})
