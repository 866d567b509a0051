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

Telemetry: the fraction of gates exactly zero before the cut, and how many removed channels had a zero gate
(``emergent``: the paper's removal) against those the ranking added to reach the target (``topped_up``: our
addition). The mechanism engaged when some gate reached exactly zero; with none, the run is a plain global
cut on the gate values and ends with a warning.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..train import fit
from ._config import MethodConfig, option
from ._filter_common import (ChannelGates, bn_layers, cut_to_target, require_bn, require_prune_epochs,
                             zero_scale_channels)
from ..train.config import method_train_config
from ._regularizers import APGGates
from ._registry import MethodResult, RunContext, Telemetry, register_method


@dataclass(frozen=True)
class SSSConfig(MethodConfig):
    strength: float = option(0.01, ge=0)  # gamma, L1 weight on the factors (reference config/cfgs.py, ResNet-50 blocks)
    momentum: float = option(0.9, ge=0, lt=1)  # mu of the APG (NAG form) update (reference core/optimizer.py)


@register_method(
    "sss", config=SSSConfig, status="partial", kind="structured", needs=("train",),
    left_out="Scaling factors sit on channels only; block (residual-branch) and group factors are not offered, "
             "because removing a whole residual branch needs module replacement that the structural engine "
             "does not do.",
    telemetry=Telemetry(
        keys=("zero_gate_fraction", "removed_channels", "emergent", "topped_up"),
        engaged=lambda t: t["zero_gate_fraction"] > 0,
        what="APG steps driving channel gates to exactly zero",
        knob="raise options.strength or prune_epochs; benchmarks/recipes/filter_engaged.yaml gives the bench "
             "setting's strength"))
def run(ctx: RunContext, cfg: SSSConfig) -> MethodResult:
    require_bn(ctx.model, "sss")
    require_prune_epochs(ctx, "sss")
    gates = ChannelGates(ctx.model, [f for f, _ in bn_layers(ctx.model)])
    apg = APGGates(gates, cfg.strength, cfg.momentum)
    fit(ctx.model, ctx.train_data, method_train_config(ctx), callbacks=[apg])
    zero = apg.zero_fraction()
    scores = {f: g.detach().clone() for f, g in gates.gates.items()}
    gates.fold_()  # a zero gate makes its BatchNorm scale exactly zero
    zero_channels = zero_scale_channels(ctx.model, ctx)
    report = cut_to_target(ctx.model, ctx, scores, allocation="global")
    emergent = zero_channels - zero_scale_channels(ctx.model, ctx)  # a group keeps one channel even when all are 0
    telemetry = {"zero_gate_fraction": zero, "removed_channels": report["removed_channels"], "emergent": emergent,
                 "topped_up": report["removed_channels"] - emergent}
    return MethodResult(model=ctx.model, telemetry=telemetry,
                        info={"strength": cfg.strength, "zero_gate_fraction": zero,
                              "epochs_trained": ctx.prune_epochs, **report})
