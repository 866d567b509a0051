"""FPGM: remove the filters nearest the geometric median of their layer, selected softly during training.

Paper: Yang He, Ping Liu, Ziwei Wang, Zhilan Hu, Yi Yang, "Filter Pruning via Geometric Median for Deep
Convolutional Neural Networks Acceleration", CVPR 2019. https://arxiv.org/abs/1811.00250

The paper questions "smaller norm, less important": a filter that the other filters of its layer can
replace is redundant whatever its norm, and the filters closest to the layer's geometric median are the
most replaceable. Its fast form scores each filter by the sum of its Euclidean distances to the others of
its layer and takes the smallest sums, the same fraction in every layer. The selection is soft (Alg. 1):
after every training epoch the selected filters are set to zero but keep training, so a filter chosen by
mistake grows back and another is chosen at the next epoch; the filters that are zero after the last epoch
are removed. As in the authors' code (``pruning_cifar10.py``), a first selection zeroes the given model
before the first epoch, so one epoch already re-selects once. Here the selection is the
:class:`~prunekit.methods._regularizers.SoftFilterMask` callback (filters tied by a residual add are scored
together and zeroed at the same indices), the number per layer comes from the engine's plan at the
MAC/parameter target, and the end cut removes exactly the last selection, so the target is met.
``schedule="one-shot"`` is one engine cut of the given model instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from ..errors import ConfigError
from ..train.config import method_train_config
from ._config import MethodConfig
from ._registry import MethodResult, RunContext, Telemetry, register_method
from ._telemetry import criterion_separation
from ._regularizers import SoftFilterMask
import prunekit as pk


@dataclass(frozen=True)
class FPGMConfig(MethodConfig):
    schedule: Literal["soft", "one-shot"] = "soft"  # soft: re-select and zero every epoch (Alg. 1); one-shot:
    # one cut of the given model, no training (ours)
    allocation: Literal["uniform", "global"] = "uniform"  # the same fraction in every layer (sec. 4.1)
    reduce: Literal["producer", "group"] = "producer"  # distances between the producing filters (eq. 4-6);
    # "group" (one-shot only) averages every coupled tensor's distances

    def __post_init__(self):
        if self.schedule == "soft" and self.reduce != "producer":
            raise ValueError(f"options['reduce']={self.reduce!r} needs schedule='one-shot': the soft schedule "
                             f"selects on the producing filters only; use reduce='producer'")


def _engaged(t: dict) -> bool:
    return t["selections"] >= 2 if t["schedule"] == "soft" else t["groups_ranked"] >= 1


@register_method("fpgm", config=FPGMConfig, kind="structured",
                 telemetry=Telemetry(keys=("schedule", "selections", "regrown", "groups_cut", "groups_ranked",
                                           "tied_fraction"),
                                     engaged=_engaged,
                                     what="soft re-selection of the filters nearest the geometric median "
                                          "(one-shot: a cut decided by the distances, not by ties)",
                                     knob="raise prune_epochs (soft: one selection before training and one "
                                          "after each epoch); one-shot: prune a trained model whose filters "
                                          "differ"))
def run(ctx: RunContext, cfg: FPGMConfig) -> MethodResult:
    info = {"criterion": "fpgm", "reduce": cfg.reduce, "schedule": cfg.schedule, "allocation": cfg.allocation}
    plan = pk.plan(ctx.model, ctx.example_inputs, target=ctx.target, criterion="fpgm", reduce=cfg.reduce,
                   allocation=cfg.allocation, ignore=list(ctx.ignore))
    if cfg.schedule == "one-shot":
        tel = criterion_separation(ctx.model, ctx.example_inputs, plan, "fpgm", reduce=cfg.reduce)
        report = pk.prune_(ctx.model, plan)
        return MethodResult(model=ctx.model, info={**info, "engine_report": report.to_dict()},
                            telemetry={"schedule": "one-shot", "selections": 1, "regrown": 0, **tel})
    if ctx.train_data is None:  # the harness checks needs statically; only the soft schedule trains
        raise ConfigError("method 'fpgm': schedule='soft' re-selects the filters while training but "
                          "train_data=None; pass training batches (RunContext(train_data=loader)) or use "
                          "schedule='one-shot'")
    mask = _soft_mask(ctx.model, plan)
    mask.apply()  # the authors' code selects once before the first epoch
    if ctx.prune_epochs >= 1:
        pk.fit(ctx.model, ctx.train_data, method_train_config(ctx), callbacks=[mask])
    last = mask.history[-1]  # Alg. 1: the filters zero after the last epoch go
    chosen = {tied[0]: last[tied[0]].tolist() for tied in mask.tied if len(last.get(tied[0], ()))}
    report = pk.prune_(ctx.model, pk.plan_channels(ctx.model, ctx.example_inputs, chosen, ignore=list(ctx.ignore))
                       ) if chosen else None
    regrown = sum(len(set(a[f].tolist()) - set(b[f].tolist()))
                  for a, b in zip(mask.history, mask.history[1:]) for f in a)
    telemetry = {"schedule": "soft", "selections": len(mask.history), "regrown": regrown,
                 "groups_cut": len(chosen), "groups_ranked": None, "tied_fraction": None}
    return MethodResult(model=ctx.model, telemetry=telemetry,
                        info={**info, "engine_report": report.to_dict() if report else None,
                              "zeroed_per_epoch": [sum(len(v) for v in h.values()) for h in mask.history]})


def _soft_mask(model: nn.Module, plan):
    """SoftFilterMask over the producing conv/linear filters of every group the plan cuts, with its counts."""
    mods = dict(model.named_modules())
    layers, n_prune, tied = {}, {}, []
    for g in plan.groups:
        if not g.removed:
            continue
        prods = [m["fqn"].rpartition(".")[0] for m in g.members
                 if m["role"] == "producer" and m["dim"] == 0 and m["fqn"].endswith(".weight")
                 and isinstance(mods.get(m["fqn"].rpartition(".")[0]), (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]
        if not prods or any(mods[f].weight.shape[0] != g.width for f in prods):
            raise ConfigError(f"method 'fpgm': group {g.name} is not one layer's filters (e.g. a concat of "
                              f"several layers), which the soft schedule cannot zero; use schedule='one-shot'")
        layers.update({f: mods[f] for f in prods})
        n_prune[prods[0]] = g.removed
        tied.append(prods)
    return SoftFilterMask(layers, n_prune, "fpgm", tied=tied)
