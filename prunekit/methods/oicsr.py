"""OICSR: group lasso over out-in channels, then a global cut on the out-in group energy.

Paper: Jiashi Li, Qi Qi, Jingyu Wang, Ce Ge, Yujian Li, Zhangzhang Yue, Haifeng Sun, "OICSR: Out-In-Channel
Sparsity Regularization for Compact Deep Neural Networks", CVPR 2019. https://arxiv.org/abs/1905.11664 (no
reference code was found).

Removing an output channel of one layer also removes the input channel of the next layer that reads it, yet
filter-level group lasso regularises only the first half. OICSR makes one group of both halves: the filter
``W_l[c]`` and the next layer's input column ``W_{l+1}[:, c]``, penalised together by
``lambda * sum_c ||[W_l[c], W_{l+1}[:, c]]||_2`` while training, so the signal a channel carries is pushed
into fewer out-in channels as a whole. The importance of a channel is then the energy (squared L2) of its
whole out-in group, ranked globally over the network, and the least important go until the target is met.

Here the out-in group of a channel is every weight slice the structural engine couples to it (the producing
filters, the reading columns, and across a residual sum all of them): the penalty is the shared
:class:`~prunekit.methods._regularizers.ChannelGroupLasso` callback over those slices, ``separate=True`` its
ablation over the producing filters only (the plain filter group lasso the paper compares with), and the cut
is one global ranking through the engine. Left out: the paper's iterative regularise-prune-fine-tune rounds
(one round here; the shared fine-tune follows), and its group norms other than L2.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..train import fit
from ..train.config import method_train_config
from ._config import MethodConfig, option
from ._filter_common import _graph, cut_to_target, filter_groups, require_prune_epochs
from ._regularizers import ChannelGroupLasso, channel_group_norms, channel_slices
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["OICSRConfig", "out_in_energy", "run"]


@dataclass(frozen=True)
class OICSRConfig(MethodConfig):
    strength: float = option(1e-4, ge=0)  # lambda of the group lasso (the paper's value was not found; ours, the
    # order of filter group-lasso strengths, e.g. Wen et al. 2016)
    separate: bool = False  # ablation (paper's baseline): group lasso over the filters alone, not the out-in group


def out_in_energy(model, groups, roles=("producer", "consumer")) -> dict[str, torch.Tensor]:
    """``{filter group key: energy per channel}``: the squared L2 norm of every weight slice of the channel
    (the paper's out-in channel importance; ``roles=("producer",)``: the filters alone)."""
    return {fg.key: channel_group_norms(channel_slices(model, fg.group, roles), fg.width).float()
            for fg in groups}


def _bottom_half_share(energy: dict) -> float:
    """Share of the total energy held by the lower half of the channels (ranked globally)."""
    allv = torch.cat([e.double() for e in energy.values()]).sort().values
    return float(allv[: len(allv) // 2].sum() / allv.sum().clamp_min(1e-30))


@register_method(
    "oicsr", config=OICSRConfig, kind="structured", needs=("train",), status="partial",
    left_out=("the paper's iterative regularise-prune-fine-tune rounds (one round, then the shared fine-tune); "
              "group norms other than L2; lambda is ours (the paper's value was not found)"),
    telemetry=Telemetry(
        keys=("bottom_half_share_before", "bottom_half_share", "energy_removed_share"),
        engaged=lambda t: t["bottom_half_share"] < 0.99 * t["bottom_half_share_before"],
        what="the out-in group lasso concentrating the weights' energy into fewer channels (the lower half's "
             "share of it falling by at least 1%)",
        knob="raise options.strength (lambda) or prune_epochs"))
def run(ctx: RunContext, cfg: OICSRConfig) -> MethodResult:
    require_prune_epochs(ctx, "oicsr")
    model = ctx.model
    groups = filter_groups(model, ctx, _graph(model, ctx))
    roles = ("producer",) if cfg.separate else ("producer", "consumer")
    before = out_in_energy(model, groups)
    lasso = ChannelGroupLasso([(fg.width, channel_slices(model, fg.group, roles)) for fg in groups], cfg.strength)
    fit(model, ctx.train_data, method_train_config(ctx), callbacks=[lasso])
    trained = out_in_energy(model, groups)
    total = float(sum(e.sum() for e in trained.values()))
    report = cut_to_target(model, ctx, trained, allocation="global")
    removed = 0.0
    for fg in groups:
        kept = report["widths"].get(fg.key, fg.width)
        e = trained[fg.key].double().sort().values
        removed += float(e[: fg.width - kept].sum())
    telemetry = {"bottom_half_share_before": _bottom_half_share(before), "bottom_half_share": _bottom_half_share(trained),
                 "energy_removed_share": removed / max(total, 1e-30)}
    log.info("oicsr: bottom-half energy share %.4f -> %.4f", telemetry["bottom_half_share_before"],
             telemetry["bottom_half_share"])
    return MethodResult(model=model, telemetry=telemetry,
                        info={"strength": cfg.strength, "separate": cfg.separate, "epochs_trained": ctx.prune_epochs,
                              **report})
