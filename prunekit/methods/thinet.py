"""ThiNet: prune a layer's filters by how little their removal changes the next layer, then rescale.

Paper: Jian-Hao Luo, Jianxin Wu, Weiyao Lin, "ThiNet: A Filter Level Pruning Method for Deep Neural
Network Compression", ICCV 2017. https://arxiv.org/abs/1707.06342

ThiNet judges filters by the statistics of the layer that reads them: it samples output values of the
next layer, splits each into per-input-channel contributions, greedily collects the channels whose summed
contribution stays nearest zero, removes them, and re-weights the surviving channels by least squares so
the next layer's output is preserved; the paper goes layer by layer with a short fine-tune after each.
Here the ``thinet`` criterion gives the greedy order, the engine cuts every layer by the same fraction to
meet the MAC/parameter target, and every layer whose inputs were cut is re-fitted by least squares to its
outputs recorded on the unpruned model: the whole kept weight by default (``refit="full"``), ThiNet's one
scaling factor per kept channel with ``refit="scale"`` (see the config for why the default differs). Left
out: the fine-tune between layers (one cut for all layers, then the shared fine-tune).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


from ._config import MethodConfig
from ._reconstruct import RECONSTRUCTION_TELEMETRY, prune_and_refit
from ._registry import MethodResult, RunContext, Telemetry, register_method


@dataclass(frozen=True)
class ThiNetConfig(MethodConfig):
    allocation: Literal["uniform", "global"] = "uniform"  # the same kept fraction r in every pruned layer (sec. 3.3)
    # "scale": ThiNet's one factor per kept input channel (sec. 3.2); "full": least squares on the whole kept weight
    # of every layer whose inputs were cut -- ours: with one cut for all layers and no fine-tune between them, the
    # scaled network fine-tunes worse than the unscaled one on ResNet-20 at 4x while the full fit ends best
    # (benchmarks/recipes/thinet_refit_*.yaml), so "full" is the default; "none" turns the re-fit off
    refit: Literal["full", "scale", "none"] = "full"


@register_method("thinet", config=ThiNetConfig, kind="structured", status="partial", needs=("calib",),
                 telemetry=Telemetry(what="least-squares re-fit of the layers reading the cut channels",
                                     **RECONSTRUCTION_TELEMETRY),
                 left_out="the short fine-tune after each layer: all layers are cut at once, then re-fitted "
                          "by least squares (the whole kept weight by default; the paper's per-channel "
                          "scaling with refit='scale'), then the shared fine-tune runs")
def run(ctx: RunContext, cfg: ThiNetConfig) -> MethodResult:
    info, telemetry = prune_and_refit(ctx, "thinet", cfg.allocation, cfg.refit)
    return MethodResult(model=ctx.model, info=info, telemetry=telemetry)
