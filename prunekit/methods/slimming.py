"""Network slimming: an L1 penalty on BatchNorm scales during training, then a global cut on ``|gamma|``.

Paper: Zhuang Liu, Jianguo Li, Zhiqiang Shen, Gao Huang, Shoumeng Yan, Changshui Zhang, "Learning Efficient
Convolutional Networks Through Network Slimming", ICCV 2017. https://arxiv.org/abs/1708.06519

Every channel that ends in a BatchNorm already carries a learnable scale, so the paper uses that scale as
the channel's importance and pushes it toward zero while training, by adding ``s * sum |gamma|`` to the
loss (a sign sub-gradient on each scale). The scales of channels the task can do without collapse; one
threshold over all scales of the network (a global ranking) then decides which channels go, so each
layer's width comes out of training rather than from a hand-set ratio. Here the sparsity term is the
:class:`~prunekit.methods._regularizers.BNScaleL1` callback, the training is ``ctx.prune_epochs`` epochs of
:func:`prunekit.train.fit`, and the cut removes the smallest ``|gamma|`` globally until the MAC/parameter
target is met, through the structural engine. The multi-pass variant is a repeat of the same call.
"""
from __future__ import annotations

import logging

from ._filter_common import (
    bn_layers, check_positive, check_target_reachable, check_training_context, method_options, restore_on_error,
    train_config,
)
from ._regularizers import BNScaleL1
from ._registry import MethodResult, RunContext, register_method

log = logging.getLogger(__name__)

DEFAULTS = {
    "strength": 1e-4,  # s: weight of sum |gamma| (paper: 1e-4 for VGG, 1e-5 for ResNet-164 / DenseNet-40)
}


def sparsity_callbacks(model, strength: float = DEFAULTS["strength"]) -> list:
    """The slimming regulariser for any training loop: L1 on every affine BatchNorm scale of ``model``."""
    bns = [bn for _, bn in bn_layers(model)]
    return [BNScaleL1(bns, strength)]


@register_method("slimming", kind="structured", defaults=DEFAULTS, needs_data=True)
def run(ctx: RunContext) -> MethodResult:
    from ._filter_common import bn_scale_scores, cut_to_target, require_bn
    from ..train import fit

    opts = method_options("slimming", ctx)
    check_positive(opts, "strength", allow_zero=True)
    check_training_context(ctx, "slimming")
    check_target_reachable(ctx.model, ctx)
    ctx.model.to(ctx.device)  # gates, masks and statistics are created on the training device
    require_bn(ctx.model, "slimming")
    with restore_on_error(ctx.model):
        fit(ctx.model, ctx.train_data, train_config(ctx), callbacks=sparsity_callbacks(ctx.model, opts["strength"]))
    scores = bn_scale_scores(ctx.model)
    report = cut_to_target(ctx.model, ctx, scores, allocation="global")
    return MethodResult(model=ctx.model, info={"strength": opts["strength"], **report})
