"""NISP: prune the neurons whose importance, propagated back from the final response layer, is lowest.

Paper: Ruichi Yu, Ang Li, Chun-Fu Chen, Jui-Hsin Lai, Vlad I. Morariu, Xintong Han, Mingfei Gao, Ching-Yung
Lin, Larry S. Davis, "NISP: Pruning Networks using Neuron Importance Score Propagation", CVPR 2018.
https://arxiv.org/abs/1711.05908

NISP keeps what the network's last features need. The responses of the final response layer (the
classifier's input) are ranked by Infinite Feature Selection; every earlier neuron then receives the
importance that flows back to it through the absolute weights, ``s_k = |W_{k+1}|^T s_{k+1}``, which bounds
how much removing it can change the final responses. Each layer loses a preset fraction of its least
important neurons and the network is fine-tuned. Here :func:`prunekit.criteria.nisp.nisp_scores`
propagates through the engine's graph, the engine cuts the same fraction per layer to meet the
MAC/parameter target, and the shared fine-tune follows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method
from ._telemetry import ONE_SHOT_TELEMETRY, criterion_separation
from ..criteria.nisp import nisp_context
import prunekit as pk


@dataclass(frozen=True)
class NISPConfig(MethodConfig):
    allocation: Literal["uniform", "global"] = "uniform"  # a predefined ratio per layer (sec. 3); global (ours)
    alpha: float = option(0.5, ge=0, le=1)  # Inf-FS mix of response spread and decorrelation (Roffo et al. 2015)
    classifier: str | None = None  # FQN of the layer reading the final responses (default: the last nn.Linear)


@register_method("nisp", config=NISPConfig, kind="structured", needs=("calib",),
                 telemetry=Telemetry(**ONE_SHOT_TELEMETRY,
                                     what="neurons removed because their propagated importance is below the "
                                          "kept ones'",
                                     knob="no removed channel scored below the kept ones: the propagated scores do not "
                                          "differ (constant weights or responses?); give calibration images that "
                                          "vary and a trained model"))
def run(ctx: RunContext, cfg: NISPConfig) -> MethodResult:
    with nisp_context(ctx.model, ctx.example_inputs, ctx.calib, ignore=ctx.ignore, alpha=cfg.alpha,
                      classifier=cfg.classifier):
        plan = pk.plan(ctx.model, ctx.example_inputs, target=ctx.target, criterion="nisp", reduce="group",
                       allocation=cfg.allocation, ignore=list(ctx.ignore), seed=ctx.seed)
        telemetry = criterion_separation(ctx.model, ctx.example_inputs, plan, "nisp")
    report = pk.prune_(ctx.model, plan)
    return MethodResult(model=ctx.model, telemetry=telemetry,
                        info={"criterion": "nisp", "reduce": "group", "allocation": cfg.allocation,
                              "alpha": cfg.alpha, "classifier": cfg.classifier, "engine_report": report.to_dict()})
