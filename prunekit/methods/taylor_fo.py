"""Taylor-FO: squared first-order Taylor importance of BatchNorm gates, removed globally in rounds.

Paper: Pavlo Molchanov, Arun Mallya, Stephen Tyree, Iuri Frosio, Jan Kautz, "Importance Estimation for
Neural Network Pruning", CVPR 2019. https://arxiv.org/abs/1906.10771

The paper estimates how much the loss would change if a unit were removed by the square of its
first-order Taylor term; with a gate after each BatchNorm this is ``(gamma * dL/dgamma)^2`` (for a filter,
``(sum w * dL/dw)^2``), which correlates closely with the true change. Scores are ranked over the whole
network without per-layer normalisation, a fixed number of units is removed every few dozen minibatches
of continued training, and the network is fine-tuned at the end. Here the ``taylor`` criterion is computed
from calibration gradients, each round removes the globally lowest channels through the engine and
trains ``steps_between`` minibatches before the next, and the last round lands on the MAC/parameter target.
"""
from __future__ import annotations

from ._registry import MethodResult, RunContext, get_method, register_method
from .l1_filter import _choice, _criterion_option, check_context, prune_iteratively

DEFAULTS = {
    "per_round": 100,  # units removed per round (paper: 100 on ImageNet); more when max_rounds would not reach
    "max_rounds": 32,  # paper: up to 32 rounds
    "steps_between": 30,  # minibatches of training between rounds (paper: 30)
    "lr": 1e-3,  # learning rate of those steps
    "reduce": "group",  # "producer": the BatchNorm gate (and filter) terms only
    "criterion": "taylor",  # the ranking; another registered criterion gives the entry's same-schedule baselines
}


@register_method("taylor-fo", kind="structured", defaults=DEFAULTS, needs_data=True)
def run(ctx: RunContext) -> MethodResult:
    opts = get_method("taylor-fo").options(ctx.options)
    _choice("taylor-fo", "reduce", opts["reduce"], ("group", "producer"))
    _criterion_option("taylor-fo", opts["criterion"])
    check_context(ctx, "taylor-fo", needs_calib=True, needs_train=opts["steps_between"] > 0)
    info = prune_iteratively(ctx, "taylor-fo", opts["criterion"], per_round=opts["per_round"],
                             max_rounds=opts["max_rounds"], steps_between=opts["steps_between"], lr=opts["lr"],
                             allocation="global", reduce=opts["reduce"])
    return MethodResult(model=ctx.model, info={**opts, **info})
