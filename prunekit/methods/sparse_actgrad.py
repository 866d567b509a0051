"""Sparse activation-gradient training: back-propagation with most small output gradients pruned, unbiased.

Paper: Xucheng Ye, Pengcheng Dai, Junyu Luo, Xin Guo, Yingjie Qi, Jianlei Yang, Yiran Chen, "Accelerating CNN
Training by Pruning Activation Gradients", ECCV 2020. https://arxiv.org/abs/1908.00173

Nothing is removed from the network. During training, the gradient with respect to each conv layer's output is
made sparse before it is used (for the layer's weight gradient and for the gradient it sends further back): a
threshold, fitted every step to the tensor's own spread under a zero-mean normal assumption so that a fraction p
of the entries lies below it, splits the entries; large ones are kept, small ones are rounded at random to zero
or to plus/minus the threshold, with the probabilities that keep every entry's expectation. The gradient is then
sparse (most entries exactly zero), which sparse arithmetic could exploit, and training still converges because
the perturbation is unbiased. Here the rule and the hooks are :mod:`prunekit.train.actgrad`; the method trains
``ctx.prune_epochs`` epochs with :class:`~prunekit.train.actgrad.ActivationGradientPruning` and returns the
trained model. The target is not used (no weight or channel is removed).

Telemetry: the fraction of conv output-gradient entries exactly zero after pruning (mean over layers), the
fraction the rule itself zeroed, and the training steps. Engaged when the rule zeroed gradient entries.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError
from ..train import fit
from ..train.actgrad import ActivationGradientPruning
from ..train.config import method_train_config
from ._config import MethodConfig, option
from ._filter_common import require_prune_epochs
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["SparseActGradConfig", "run"]


@dataclass(frozen=True)
class SparseActGradConfig(MethodConfig):
    p: float = option(0.9, ge=0, lt=1)  # fraction of each output gradient below the threshold (entry's check: 0.9)


@register_method(
    "sparse-actgrad", config=SparseActGradConfig, kind="other", needs=("train",), status="partial",
    left_out="no smaller model: the method trains with sparse activation gradients and removes nothing; the "
             "back-propagation speed-up needs sparse-GEMM hardware or kernels, which prunekit does not ship "
             "(dense kernels run on the sparse tensors)",
    telemetry=Telemetry(
        keys=("zero_fraction", "pruned_fraction", "steps"),
        engaged=lambda t: t["pruned_fraction"] > 0,
        what="stochastic pruning of small activation gradients",
        knob="raise options.p (the fraction of gradient entries below the threshold) or prune_epochs"))
def run(ctx: RunContext, cfg: SparseActGradConfig) -> MethodResult:
    require_prune_epochs(ctx, "sparse-actgrad")
    if not any(isinstance(m, nn.Conv2d) for m in ctx.model.modules()):
        raise ConfigError(f"model={type(ctx.model).__name__}: sparse-actgrad prunes the output gradients of Conv2d "
                          f"layers and the model has none; choose a CNN (e.g. lenet5, vgg-small, resnet20)")
    pruning = ActivationGradientPruning(ctx.model, cfg.p, seed=ctx.seed)
    steps = fit(ctx.model, ctx.train_data, method_train_config(ctx), callbacks=[pruning]).steps
    pruning.remove()
    per_layer = pruning.stats()
    zero = sum(s["zero_fraction"] for s in per_layer.values()) / len(per_layer)
    pruned = sum(s["pruned_fraction"] for s in per_layer.values()) / len(per_layer)
    log.info("sparse-actgrad: %.1f%% of conv output-gradient entries zero after pruning (%.1f%% by the rule)",
             100 * zero, 100 * pruned)
    return MethodResult(model=ctx.model, telemetry={"zero_fraction": zero, "pruned_fraction": pruned, "steps": int(steps)},
                        info={"p": cfg.p, "per_layer": per_layer})
