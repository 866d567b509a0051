"""Network slimming: an L1 penalty on BatchNorm scales during training, then a global cut on ``|gamma|``.

Paper: Zhuang Liu, Jianguo Li, Zhiqiang Shen, Gao Huang, Shoumeng Yan, Changshui Zhang, "Learning Efficient
Convolutional Networks Through Network Slimming", ICCV 2017. https://arxiv.org/abs/1708.06519

Every channel that ends in a BatchNorm already carries a learnable scale, so the paper uses that scale as
the channel's importance and pushes it toward zero while training, by adding ``s * sum |gamma|`` to the
loss (a sign sub-gradient on each scale). The scales of channels the task can do without collapse; one
threshold over all scales of the network (a global ranking) then decides which channels go, so each
layer's width comes out of training rather than from a hand-set ratio. Here the sparsity term is the
:class:`~prunekit.methods._regularizers.BNScaleL1` callback, the training is ``ctx.prune_epochs`` epochs of
:func:`prunekit.train.fit`, the score is the registered ``bn-scale`` criterion and the cut removes the
smallest ``|gamma|`` globally until the MAC/parameter target is met, through the structural engine. The
multi-pass variant is a repeat of the same call.

Telemetry: the fraction of scales below 1e-2 (the entry's "collapsed" threshold) before and after the
sparsity training, and the mean ``|gamma|`` of the removed channels over that of the kept ones. The push
engaged when it drove scales below 1e-2 that were not there before.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..train import fit
from ._config import MethodConfig, option
from ._filter_common import (bn_criterion_scores, bn_layers, cut_to_target, require_bn, require_prune_epochs)
from ..train.config import method_train_config
from ._regularizers import BNScaleL1
from ._registry import MethodResult, RunContext, Telemetry, register_method

SMALL = 1e-2  # |gamma| below this counts as collapsed (the entry's small-scale check (a))


@dataclass(frozen=True)
class SlimmingConfig(MethodConfig):
    strength: float = option(1e-4, ge=0)  # s, weight of sum|gamma| (paper sec. 4.3: 1e-4 VGG, 1e-5 ResNet/DenseNet)


def sparsity_callbacks(model, strength: float = SlimmingConfig.strength) -> list:
    """The slimming regulariser for any training loop: L1 on every affine BatchNorm scale of ``model``."""
    return [BNScaleL1([bn for _, bn in bn_layers(model)], strength)]


def _gammas(model) -> torch.Tensor:
    return torch.cat([bn.weight.detach().abs().cpu() for _, bn in bn_layers(model)])


@register_method(
    "slimming", config=SlimmingConfig, kind="structured", needs=("train",),
    telemetry=Telemetry(
        keys=("small_scale_fraction_before", "small_scale_fraction", "removed_kept_gamma_ratio"),
        engaged=lambda t: t["small_scale_fraction"] > t["small_scale_fraction_before"],
        what="the L1 push driving BN scales below 1e-2",
        knob="raise options.strength or prune_epochs (the paper's 1e-4 is for ~60k steps; "
             "benchmarks/recipes/filter_engaged.yaml gives the bench setting's value)"))
def run(ctx: RunContext, cfg: SlimmingConfig) -> MethodResult:
    require_bn(ctx.model, "slimming")
    require_prune_epochs(ctx, "slimming")
    before = _gammas(ctx.model)
    fit(ctx.model, ctx.train_data, method_train_config(ctx), callbacks=sparsity_callbacks(ctx.model, cfg.strength))
    trained = _gammas(ctx.model)
    report = cut_to_target(ctx.model, ctx, bn_criterion_scores(ctx.model), allocation="global")
    kept = _gammas(ctx.model)  # the same BatchNorm modules, sliced to the kept channels
    n_removed = len(trained) - len(kept)
    ratio = (float(trained.sum() - kept.sum()) / n_removed) / float(kept.mean()) if n_removed else None
    telemetry = {"small_scale_fraction_before": int((before < SMALL).sum()) / len(before),
                 "small_scale_fraction": int((trained < SMALL).sum()) / len(trained),
                 "removed_kept_gamma_ratio": ratio}
    return MethodResult(model=ctx.model, telemetry=telemetry,
                        info={"strength": cfg.strength, "epochs_trained": ctx.prune_epochs, **report})
