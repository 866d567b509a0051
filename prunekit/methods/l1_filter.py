"""L1-filter: remove the filters with the smallest sum of absolute weights, layer by layer.

Paper: Hao Li, Asim Kadav, Igor Durdanovic, Hanan Samet, Hans Peter Graf, "Pruning Filters for Efficient
ConvNets", ICLR 2017. https://arxiv.org/abs/1608.08710

The paper ranks the filters of each convolution by the L1 norm of their own kernel weights and removes the
weakest ones together with the feature maps they produce and the matching input slices of the next layer.
How much each layer loses is read off a sensitivity analysis: every layer is pruned alone at growing
ratios and evaluated without retraining, and layers whose accuracy falls quickly are pruned less or not
at all; the network is then retrained. Here the score is the engine's ``l1`` criterion on the producing
filters (``reduce="producer"``), the allocation is the same fraction per layer by default (the engine
finds the fraction that meets the MAC/parameter target) or, with ``allocation="sensitivity"``, the
per-layer ratios of :mod:`prunekit.allocate.sensitivity` measured on the validation data.

:func:`~prunekit.methods._telemetry.criterion_separation` is the telemetry of every one-shot criterion cut
(l1-filter, fpgm, hrank, nisp): how far the criterion, not the tie-break, decided which channels went.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Literal


from ..errors import ConfigError
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method
from ._telemetry import ONE_SHOT_TELEMETRY, criterion_separation
from ..api.sensitivity import ratios_for_target, sensitivity_curves
import prunekit as pk

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class L1FilterConfig(MethodConfig):
    allocation: Literal["uniform", "global", "sensitivity"] = "uniform"  # per-layer fractions: the paper reads
    # them off its sensitivity analysis (sec. 3.2, "sensitivity"); uniform (ours, the default) meets a target
    # without validation data; global ranks mean-normalised scores across layers (ours)
    reduce: Literal["producer", "group"] = "producer"  # score = the producing filter's own |W| (sec. 3.1)
    max_batches: int = option(4, ge=1)  # validation batches per evaluation of the sensitivity sweep (ours)


@register_method("l1-filter", config=L1FilterConfig, kind="structured",
                 telemetry=Telemetry(**ONE_SHOT_TELEMETRY,
                                     what="filters removed because their L1 norm is below the kept ones'",
                                     knob="no removed filter scored below the kept ones: the filters' L1 "
                                          "norms tie (a constant model?) or no group was cut; prune a trained "
                                          "model or lower the target"))
def run(ctx: RunContext, cfg: L1FilterConfig) -> MethodResult:
    info: dict = {"criterion": "l1", "reduce": cfg.reduce, "allocation": cfg.allocation}
    per_layer = None
    if cfg.allocation == "sensitivity":  # sec. 3.2: prune each layer alone, evaluate, spare the sensitive ones

        data = ctx.val_data if ctx.val_data is not None else ctx.calib
        if data is None:
            raise ConfigError("method 'l1-filter': allocation='sensitivity' evaluates each pruned layer but "
                              "val_data=None and calib=None; pass val_data (or calib) batches, or use "
                              "allocation='uniform'")
        batches = list(itertools.islice(iter(data), cfg.max_batches))
        curves = sensitivity_curves(ctx.model, ctx.example_inputs,
                                    lambda m: pk.evaluate(m, batches, device=ctx.device)["accuracy"],
                                    criterion="l1", ignore=ctx.ignore, reduce=cfg.reduce, seed=ctx.seed)
        per_layer, drop = ratios_for_target(ctx.model, ctx.example_inputs, curves, ctx.target, ignore=ctx.ignore)
        info.update({"sensitivity": curves, "per_layer": per_layer, "accepted_drop": drop})
    how = {"per_layer": per_layer} if per_layer else {"target": ctx.target, "allocation": cfg.allocation}
    plan = pk.plan(ctx.model, ctx.example_inputs, criterion="l1", reduce=cfg.reduce, ignore=list(ctx.ignore),
                   seed=ctx.seed, **how)
    telemetry = criterion_separation(ctx.model, ctx.example_inputs, plan, "l1", reduce=cfg.reduce, seed=ctx.seed)
    report = pk.prune_(ctx.model, plan)
    return MethodResult(model=ctx.model, info={**info, "engine_report": report.to_dict()}, telemetry=telemetry)
