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
on the unpruned network, with inputs from the pruned one. Left out: the layer-by-layer order (all layers
are selected on the unpruned network and cut at once), the penalty bisection to exactly c' channels (the
path order is used instead) and the "3C" combination with factorisations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._config import MethodConfig
from ._registry import MethodResult, RunContext, Telemetry, register_method
from ._reconstruct import RECONSTRUCTION_TELEMETRY, prune_and_refit


@dataclass(frozen=True)
class CPLassoConfig(MethodConfig):
    allocation: Literal["uniform", "global"] = "uniform"  # the paper sets per-layer ratios by hand; uniform -- ours
    refit: Literal["full", "scale", "none"] = "full"  # least squares on the kept weights (sec. 3.1, step (ii))


@register_method("cp-lasso", config=CPLassoConfig, kind="structured", status="partial", needs=("calib",),
                 telemetry=Telemetry(what="least-squares re-fit of the layers whose input channels were cut",
                                     **RECONSTRUCTION_TELEMETRY),
                 left_out="sequential layer-by-layer selection (all layers are selected on the unpruned network "
                          "and cut at once, then re-fitted), the penalty bisection to exactly c' non-zero "
                          "coefficients (channels are ranked by the LASSO path instead), and the 3C combination "
                          "with factorisations")
def run(ctx: RunContext, cfg: CPLassoConfig) -> MethodResult:
    info, telemetry = prune_and_refit(ctx, "cp-lasso", cfg.allocation, cfg.refit)
    return MethodResult(model=ctx.model, info=info, telemetry=telemetry)
