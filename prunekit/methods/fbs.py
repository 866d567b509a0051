"""FBS: feature boosting and suppression, a per-input channel gate predicted from each layer's input.

Paper: Xitong Gao, Yiren Zhao, Łukasz Dudziak, Robert Mullins, Cheng-zhong Xu, "Dynamic Channel Pruning:
Feature Boosting and Suppression", ICLR 2019. https://arxiv.org/abs/1810.05331

The network keeps all its weights; what runs depends on the input. Every gated convolution gets a tiny
auxiliary layer that looks at the layer's input, reduced to one number per channel (the spatial mean of its
magnitude), and predicts a non-negative saliency per output channel (a linear layer and a ReLU). A
winner-take-all step keeps the ``ceil(d * C)`` largest saliencies of this input and zeroes the rest; the kept
saliencies multiply the BN-normalised conv outputs (boosting), the others are not computed (suppression). As
the next layer's matching inputs are zero too, an inner layer costs about ``d^2`` of its dense MACs. The
predictors and the network are trained together with SGD from the trained model, with an L1 term on the
saliencies. Here the density ``d`` is the largest uniform one whose executed MACs per input meet the target,
and the gated model runs its kept channels only (:mod:`prunekit.surgery.dynamic`: the weight rows gathered per
input, exact zero inputs not read).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..surgery.dynamic import FBS, SaliencySelector, gate_convs_, gated_units, set_keep_
from ..train import Callback, fit
from ..train.config import method_train_config
from ._config import MethodConfig, option
from ._dynamic import (DYNAMIC_TARGETS, DenseCost, fit_density, gate_candidates, keep_count, macs_stats,
                       varying_fraction)
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["FBSConfig", "SaliencyL1", "run"]


@dataclass(frozen=True)
class FBSConfig(MethodConfig):
    # d, the kept fraction of every gated layer (sec. 3.3); None: the largest d meeting the target (ours)
    density: float | None = option(None, gt=0, le=1)
    l1: float = option(1e-8, ge=0)  # lambda of the L1 term on the saliencies (sec. 3.4; entry: recalled 1e-8)
    skip_first: bool = True  # ours: the first conv reads the image (1-3 channels) and stays dense
    init_bias: float = 1.0  # ours: predictors start at saliency ~1, so training starts from the trained model's outputs


class SaliencyL1(Callback):
    """Adds ``l1 * mean over the batch of sum_layers ||s||_1`` to the loss (FBS's sparsity term on the saliencies)."""

    def __init__(self, strength: float):
        self.strength = float(strength)
        self.last = 0.0

    def on_before_backward(self, state):
        if self.strength == 0:
            return
        terms = [u.selector.last_saliency.sum(1).mean() for u in gated_units(state.model).values()
                 if isinstance(u.selector, SaliencySelector) and u.selector.last_saliency is not None
                 and u.selector.last_saliency.requires_grad]
        if terms:
            reg = self.strength * torch.stack(terms).sum()
            self.last = float(reg.detach())
            state.loss = state.loss + reg


@register_method(
    "fbs", config=FBSConfig, kind="other", needs=("train",), status="partial", **DYNAMIC_TARGETS,
    left_out="the gradual lowering of d during fine-tuning (recalled in the entry, not confirmed) is not built: "
             "d is fixed from the start; per-layer densities are not exposed",
    telemetry=Telemetry(keys=("density", "macs_mean", "macs_std", "varying", "steps"),
                        engaged=lambda t: t["density"] < 1 and t["varying"] > 0 and t["steps"] > 0,
                        what="per-input channel selection by trained saliency predictors",
                        knob="lower the target / options.density below 1 and give prune_epochs >= 1 "
                             "(the predictors train with the network)"),
    smoke={})
def run(ctx: RunContext, cfg: FBSConfig) -> MethodResult:
    target = float(ctx.target_value)  # executed MACs per input kept (a macs= target: the harness checks)
    model = ctx.model
    x = ctx.example_inputs
    pairs = gate_candidates(model, x, ctx.ignore, cfg.skip_first)
    cost = DenseCost(model, x, [c for c, _ in pairs])
    gate_convs_(model, pairs, FBS, lambda fqn, conv: [conv.out_channels])
    units = list(gated_units(model).values())
    with torch.no_grad():
        for u in units:
            u.selector.fc.weight.mul_(0.01)
            u.selector.fc.bias.fill_(cfg.init_bias)

    def set_density(d):
        for u in units:
            set_keep_(u, keep_count(d, u.conv.out_channels))

    calib = ctx.calib or ctx.train_data
    if cfg.density is None:
        density = fit_density(model, cost, calib, target, set_density)
    else:
        density = cfg.density
        set_density(density)
    reg = SaliencyL1(cfg.l1)
    steps = 0
    if ctx.prune_epochs > 0:
        steps = fit(model, ctx.train_data, method_train_config(ctx), callbacks=[reg]).steps
        if cfg.density is None:  # trained saliencies zero fewer channels than the initial ones: d again
            density = min(density, fit_density(model, cost, calib, target, set_density))
            set_density(density)
    model.eval()
    stats = macs_stats(model, cost, ctx.val_data or calib)
    telemetry = {"density": density, **stats, "varying": varying_fraction(model, ctx.val_data or calib),
                 "steps": int(steps), "l1_term": reg.last}
    log.info("fbs: d=%.3f, executed MACs %.3f +- %.3f of dense", density, stats["macs_mean"], stats["macs_std"])
    return MethodResult(model=model, callbacks=[SaliencyL1(cfg.l1)],
                        info={"gated": [c for c, _ in pairs], "dense_macs": cost.total,
                              "keep": {c: u.selector.k for (c, _), u in zip(pairs, units)}},
                        telemetry=telemetry)
