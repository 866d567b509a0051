"""RBP: recursive Bayesian pruning, layer by layer, of channels whose learned dropout noise says they are redundant.

Paper: Yuefu Zhou, Ya Zhang, Yanfeng Wang, Qi Tian, "Accelerate CNN via Recursive Bayesian Pruning", ICCV 2019.
https://arxiv.org/abs/1812.00353 (no reference code was found).

Every channel of a layer is multiplied by a Gaussian dropout noise ``theta_c``; a channel whose learned noise
is dominated by its spread (its mean indistinguishable from zero) carries nothing the network needs. The
redundancy of a layer's channels depends on what was already removed before it, so the paper models the
noises of successive layers as a Markov chain and targets the posterior of layer ``l``'s noise *given* the
pruned layer ``l-1``. That posterior has no closed form; a sparsity-inducing prior regularises the noise
toward an approximation of it, and the pruning is recursive: learn layer ``l``'s noise (data loss plus the
prior term, the weights training too), remove its redundant channels and the input slices of the layers
that read them, then go on to layer ``l+1`` on the already pruned network; fine-tune at the end. How many
channels each layer loses is learned, not set.

Here the noise is the shared :class:`~prunekit.train.variational.ChannelNoiseGates` callback on the layer's
BatchNorm (or, without one, on the Conv/Linear producing the channels), ``kl_scale * KL / N`` joins the loss,
layers go in the engine's group order (data-flow order), each for ``ctx.prune_epochs`` epochs of
:func:`prunekit.train.fit`, and the channels with ``log alpha = log(sigma^2 / mu^2) > log_alpha_threshold``
are cut through the structural engine before the next layer's noise is learned; the kept gates' means are
folded into the layer. When the recursion leaves the model above ``ctx.target``, the channels with the
lowest signal-to-noise ratio go in one global ranking (reported separately). The shared fine-tune follows.
The paper's Dirac-like prior could not be reconstructed from its text: the KL is the variational-dropout
log-uniform one (Molchanov et al. 2017), the closest substitute (see ``left_out``).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Literal

import torch

from ..api import plan_channels, prune_
from ..train import fit
from ..train.config import method_train_config
from ..train.variational import ChannelNoiseGates, n_examples
from ._config import MethodConfig, option
from ._filter_common import _graph, cut_to_target, filter_groups, require_prune_epochs
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["RBPConfig", "run", "redundant_channels"]


@dataclass(frozen=True)
class RBPConfig(MethodConfig):
    prior: Literal["log-uniform", "gaussian"] = "log-uniform"  # the sparsity-inducing prior's KL: the paper's
    # Dirac-like prior was not reconstructable; log-uniform = variational dropout's (Molchanov et al. 2017), ours
    log_alpha_threshold: float = 3.0  # remove channels with log(sigma^2/mu^2) above this (Molchanov et al. 2017,
    # sec. 4; the paper's threshold was not found)
    kl_scale: float = option(1.0, ge=0)  # factor on KL/N in the loss; 1 = the ELBO per example (paper sec. 3)
    init_log_alpha: float = -4.0  # log alpha of every noise at the start (ours: a small noise, the layer intact)
    gate_lr: float = option(1e-2, gt=0)  # Adam learning rate of the noise parameters (ours)


def redundant_channels(stats: dict, threshold: float) -> torch.Tensor:
    """Channels whose every gate (one per producing module of the group) has ``log alpha > threshold``.

    Example:
        >>> s = {"a": {"log_alpha": torch.tensor([5.0, 0.0])}, "b": {"log_alpha": torch.tensor([4.0, 9.0])}}
        >>> redundant_channels(s, 3.0).tolist()
        [0]
    """
    under = torch.stack([s["log_alpha"] > threshold for s in stats.values()]).all(0)
    return torch.nonzero(under).flatten()


def _gated_modules(model, group) -> dict:
    mods = dict(model.named_modules())
    return {f: mods[f] for f in (group.bns or group.convs)}


def _cut_rest(model, ctx: RunContext, scores: dict, dense: float) -> dict:
    """The lowest-SNR channels go until ``ctx.target`` (a fraction of the model *before* the recursion) is met."""
    graph = _graph(model, ctx)
    now = graph.macs() if ctx.target_kind == "macs" else graph.params()
    if now <= ctx.target_value * dense:
        return {"removed_channels": 0, f"kept_{ctx.target_kind}_fraction": now / dense}
    rest = dataclasses.replace(ctx, target=f"{ctx.target_kind}={ctx.target_value * dense / now}")
    report = cut_to_target(model, rest, scores, allocation="global")
    graph = _graph(model, ctx)
    report[f"kept_{ctx.target_kind}_fraction"] = (graph.macs() if ctx.target_kind == "macs" else graph.params()) / dense
    return report


@register_method(
    "rbp", config=RBPConfig, kind="structured", needs=("train",), status="partial",
    left_out=("the paper's Dirac-like prior (its formula could not be reconstructed): the KL is variational "
              "dropout's log-uniform one; the threshold (log alpha > 3) is Molchanov et al.'s; each layer's noise "
              "is learned for prune_epochs epochs (the paper's per-layer budget was not found)"),
    smoke={"kl_scale": 3.0},
    telemetry=Telemetry(
        keys=("layers_processed", "channels_under_rule", "channels", "kl"),
        engaged=lambda t: t["channels_under_rule"] > 0,
        what="some channel's learned dropout noise growing past log alpha > log_alpha_threshold",
        knob="raise options.kl_scale (the prior term's weight; 1 = the ELBO) or prune_epochs (epochs per layer)"))
def run(ctx: RunContext, cfg: RBPConfig) -> MethodResult:
    require_prune_epochs(ctx, "rbp")
    model = ctx.model
    n = n_examples(ctx.train_data)
    graph = _graph(model, ctx)
    dense = graph.macs() if ctx.target_kind == "macs" else graph.params()
    keys = [g.key for g in filter_groups(model, ctx, graph)]
    total = under = 0
    per_layer, snr2, kls = {}, {}, []
    for key in keys:  # the recursion: layer l's noise is learned on the network already pruned before it
        group = next((g for g in filter_groups(model, ctx, _graph(model, ctx)) if g.key == key), None)
        if group is None:
            continue
        gates = ChannelNoiseGates(_gated_modules(model, group), prior=cfg.prior, init_log_alpha=cfg.init_log_alpha,
                                  kl_weight=cfg.kl_scale / n, lr=cfg.gate_lr, seed=ctx.seed + len(per_layer))
        try:
            fit(model, ctx.train_data, method_train_config(ctx), callbacks=[gates])
        finally:
            gates.remove()
        stats = gates.stats()
        kls.append(float(gates.kl().detach()))
        gone = redundant_channels(stats, cfg.log_alpha_threshold)[: group.width - 1]  # a layer keeps one channel
        gates.fold_()
        total += group.width
        under += len(gone)
        per_layer[key] = len(gone)
        kept = torch.ones(group.width, dtype=torch.bool)
        kept[gone] = False
        snr2[key] = torch.stack([(-s["log_alpha"]).exp() for s in stats.values()]).sum(0)[kept]
        if len(gone):
            prune_(model, plan_channels(model, ctx.example_inputs, {key: gone.tolist()}, ignore=list(ctx.ignore)))
        log.info("rbp: %s: %d of %d channels with log alpha > %g", key, len(gone), group.width,
                 cfg.log_alpha_threshold)
    report = _cut_rest(model, ctx, {k: v for k, v in snr2.items() if len(v)}, dense)
    telemetry = {"layers_processed": len(per_layer), "channels_under_rule": under, "channels": total,
                 "kl": sum(kls)}
    return MethodResult(model=model, telemetry=telemetry,
                        info={"epochs_trained": ctx.prune_epochs * len(per_layer), "removed_per_layer": per_layer,
                              **report})
