"""Taylor-FM: remove the feature map with the smallest first-order Taylor score, fine-tune, repeat.

Paper: Pavlo Molchanov, Stephen Tyree, Tero Karras, Timo Aila, Jan Kautz, "Pruning Convolutional Neural
Networks for Resource Efficient Inference", ICLR 2017. https://arxiv.org/abs/1611.06440

The paper approximates the loss change caused by zeroing a feature map with the first-order Taylor term
``|mean(a * dL/da)|`` over batch and positions, scales each layer's scores to unit l2 norm so that all
layers can be ranked together, and prunes greedily: remove the globally weakest map, fine-tune a few
minibatches, and repeat until the budget is met. Here the ``taylor-act`` criterion provides the scores
from calibration gradients, each round removes ``per_round`` maps (1, as in the paper, unless
``max_rounds`` rounds would not reach the target) through the engine, and ``steps_between`` minibatches
of ``ctx.train_data`` are trained between rounds, within ``ctx.prune_epochs`` epochs in total.
"""
from __future__ import annotations

from ._registry import MethodResult, RunContext, get_method, register_method
from .l1_filter import _choice, _criterion_option, check_context, prune_iteratively

DEFAULTS = {
    "per_round": 1,  # feature maps removed per round (paper: 1)
    "max_rounds": 64,  # cap on rounds; per_round grows when the target needs more
    "steps_between": 20,  # minibatches of fine-tuning between rounds
    "lr": 1e-3,  # learning rate of those steps
    "reduce": "group",
    "criterion": "taylor-act",  # the ranking; another registered criterion gives the entry's same-schedule baselines
}


@register_method("taylor-fm", kind="structured", defaults=DEFAULTS, needs_data=True)
def run(ctx: RunContext) -> MethodResult:
    opts = get_method("taylor-fm").options(ctx.options)
    _choice("taylor-fm", "reduce", opts["reduce"], ("group", "producer"))
    _criterion_option("taylor-fm", opts["criterion"])
    check_context(ctx, "taylor-fm", needs_calib=True, needs_train=opts["steps_between"] > 0)
    info = prune_iteratively(ctx, "taylor-fm", opts["criterion"], per_round=opts["per_round"],
                             max_rounds=opts["max_rounds"], steps_between=opts["steps_between"], lr=opts["lr"],
                             allocation="global", reduce=opts["reduce"])
    return MethodResult(model=ctx.model, info={**opts, **info})
