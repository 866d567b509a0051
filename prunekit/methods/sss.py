"""SSS: sparse scaling factors on channels, trained by accelerated proximal gradient, exact zeros removed.

Paper: Zehao Huang, Naiyan Wang, "Data-Driven Sparse Structure Selection for Deep Neural Networks",
ECCV 2018. https://arxiv.org/abs/1707.01213

SSS puts a learnable factor, initialised to one, on the output of each structure that could be removed (a
channel, a group, or a whole residual branch) and trains it together with the weights under an L1 penalty.
The factors are not moved by plain SGD: they get their own accelerated proximal gradient update (written in
Nesterov form), whose soft-threshold step makes many of them exactly zero and keeps the rest non-negative.
A structure whose factor is zero contributes nothing and is deleted, so the widths (and depths) of the
network are selected by the data. Here the factors are channel gates on the outputs of the BatchNorm layers
(:class:`~prunekit.methods._filter_common.ChannelGates`, hooks, no change to the model's modules), trained by
the :class:`~prunekit.methods._regularizers.APGGates` callback with the loop's learning rate, folded into the
BatchNorm affine parameters after training (a zero gate makes its channel output exactly zero), and the cut
removes the smallest gates globally, zeros first, until the MAC/parameter target is met.
"""
from __future__ import annotations

import logging

from ._filter_common import (
    check_target_reachable,
    ChannelGates, bn_layers, check_positive, check_training_context, method_options, restore_on_error, train_config,
)
from ._regularizers import APGGates
from ._registry import MethodResult, RunContext, register_method

log = logging.getLogger(__name__)

DEFAULTS = {
    "strength": 0.01,  # gamma of the paper: L1 weight on the scaling factors (ResNet-50 block selection)
    "momentum": 0.9,  # Nesterov momentum of the APG update
}


@register_method(
    "sss", status="partial", kind="structured", defaults=DEFAULTS, needs_data=True,
    left_out="Scaling factors sit on channels only; block (residual-branch) and group factors are not offered, "
             "because removing a whole residual branch needs module replacement that the structural engine "
             "does not do.",
)
def run(ctx: RunContext) -> MethodResult:
    from ._filter_common import cut_to_target, require_bn
    from ..train import fit

    opts = method_options("sss", ctx)
    check_positive(opts, "strength", allow_zero=True)
    check_positive(opts, "momentum", allow_zero=True)
    check_training_context(ctx, "sss")
    check_target_reachable(ctx.model, ctx)
    ctx.model.to(ctx.device)  # gates, masks and statistics are created on the training device
    require_bn(ctx.model, "sss")
    gates = ChannelGates(ctx.model, [f for f, _ in bn_layers(ctx.model)])
    apg = APGGates(gates, opts["strength"], opts["momentum"])
    try:
        with restore_on_error(ctx.model):
            fit(ctx.model, ctx.train_data, train_config(ctx), callbacks=[apg])
    except BaseException:
        gates.remove()
        raise
    scores = {f: g.detach().clone() for f, g in gates.gates.items()}
    gates.fold_()
    n = sum(len(s) for s in scores.values())
    zeros = sum(int((s == 0).sum()) for s in scores.values())
    report = cut_to_target(ctx.model, ctx, scores, allocation="global")
    return MethodResult(model=ctx.model, info={"strength": opts["strength"], "zero_gate_fraction": zeros / n,
                                               **report})
