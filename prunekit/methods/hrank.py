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

from dataclasses import dataclass
from typing import Literal

from ._config import MethodConfig
from ._registry import MethodResult, RunContext, Telemetry, register_method
from ._telemetry import ONE_SHOT_TELEMETRY, criterion_separation
import prunekit as pk


@dataclass(frozen=True)
class HRankConfig(MethodConfig):
    allocation: Literal["uniform", "global"] = "uniform"  # the paper's rates are hand-set per layer (sec. 4.1,
    # `--compress_rate`); uniform (ours) meets a target; global ranks across layers (ours)
    per_layer: dict | None = None  # {module fqn: sparsity}: the paper's hand-set rates instead of a target


@register_method("hrank", config=HRankConfig, kind="structured", status="partial", needs=("calib",),
                 left_out="the layer-by-layer schedule with a fine-tune after each layer: all layers are cut "
                          "at once, then the shared fine-tune runs",
                 telemetry=Telemetry(**ONE_SHOT_TELEMETRY,
                                     what="filters removed because their maps' average rank is below the kept "
                                          "ones' (removed_over_kept: mean rank removed / kept)",
                                     knob="no removed channel scored below the kept ones: the maps have "
                                          "equal ranks (all full rank or all constant); give calibration "
                                          "images that vary or prune layers with larger maps"))
def run(ctx: RunContext, cfg: HRankConfig) -> MethodResult:
    how = {"per_layer": cfg.per_layer} if cfg.per_layer else {"target": ctx.target,
                                                              "allocation": cfg.allocation}
    plan = pk.plan(ctx.model, ctx.example_inputs, criterion="hrank", calib=ctx.calib, reduce="group",
                   ignore=list(ctx.ignore), seed=ctx.seed, **how)
    telemetry = criterion_separation(ctx.model, ctx.example_inputs, plan, "hrank", calib=ctx.calib)
    report = pk.prune_(ctx.model, plan)
    return MethodResult(model=ctx.model, telemetry=telemetry,
                        info={"criterion": "hrank", "reduce": "group", "allocation": cfg.allocation,
                              "per_layer": cfg.per_layer, "engine_report": report.to_dict()})
