"""Scoring a candidate sub-network without training it: adaptive BatchNorm (EagleEye, Li et al., ECCV 2020).

A pruned network's BatchNorm layers hold the dense network's running statistics, which no longer match what
they see; accuracy measured with them ("vanilla evaluation") says little about how the sub-net will do after
fine-tuning. :func:`recalibrate_bn` re-estimates every BatchNorm's running mean and variance on a few
training batches (train-mode forwards, no gradient); :class:`SubnetEvaluator` does that and then measures
accuracy on a held-out split of the *training* data (never the test split), the score the search methods of
:mod:`prunekit.allocate.search` rank candidates by.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..errors import ConfigError
from .config import TrainConfig
from .loop import evaluate, fit

__all__ = ["recalibrate_bn", "SubnetEvaluator", "FinetuneEvaluator"]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches, device: str = "cpu") -> int:
    """Re-estimate every BatchNorm's running mean/var on ``batches`` (cumulative average); returns #batches.

    Pruning changes the statistics a BN layer sees; recomputing them on a few training batches recovers much
    of the accuracy lost right after the cut, with no gradient step.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    saved = [(m.momentum, m.training) for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the calibration batches
    model.train()
    n = 0
    try:
        for x, _ in batches:
            model(x.to(device))
            n += 1
    finally:
        for m, (momentum, _) in zip(bns, saved):
            m.momentum = momentum
        model.train(was_training)
    return n


class SubnetEvaluator:
    """``evaluator(model) -> accuracy`` of a (masked or pruned) sub-net: BatchNorm recalibrated on
    ``recal`` (a list of training batches; ``adaptive_bn=False``: the stale statistics, EagleEye's "vanilla
    evaluation"), then accuracy on ``val`` (held-out training batches). Counts its calls."""

    def __init__(self, recal: Iterable, val: Iterable, *, device: str = "cpu", adaptive_bn: bool = True,
                 metric: str = "accuracy"):
        if metric not in ("accuracy", "loss"):
            raise ConfigError(f"metric={metric!r} is not valid; choose 'accuracy' or 'loss'")
        self.metric = metric
        self.recal, self.val = list(recal), list(val)
        if adaptive_bn and not self.recal:
            raise ConfigError("SubnetEvaluator: recal has no batch; adaptive BN needs training batches "
                              "(or pass adaptive_bn=False for the vanilla evaluation)")
        if not self.val:
            raise ConfigError("SubnetEvaluator: val has no batch; pass held-out training batches to score on")
        self.device, self.adaptive_bn, self.calls = device, adaptive_bn, 0

    def __call__(self, model: nn.Module) -> float:
        self.calls += 1
        if self.adaptive_bn:
            recalibrate_bn(model, self.recal, self.device)
        res = evaluate(model, self.val, device=self.device)
        return float(res["accuracy"]) if self.metric == "accuracy" else -float(res["loss"])


class FinetuneEvaluator:
    """``evaluator(model) -> accuracy`` of a sub-net after a short fine-tune (ABCPruner's fitness): ``steps``
    optimiser steps of ``config`` (epochs and scheduler overridden: one pass, constant lr) on ``train``
    batches, cycled when there are fewer, then accuracy (or minus the loss) on ``val`` (held-out training
    batches), BatchNorm statistics as the training left them. The model is trained in place: pass a pruned
    copy. ``steps=0`` scores the sub-net as it is. Counts its calls.
    """

    def __init__(self, train: Iterable, val: Iterable, *, steps: int, config: TrainConfig | None = None,
                 device: str = "cpu", metric: str = "accuracy"):
        if metric not in ("accuracy", "loss"):
            raise ConfigError(f"metric={metric!r} is not valid; choose 'accuracy' or 'loss'")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ConfigError(f"steps={steps!r} must be an int >= 0 (fine-tune steps per candidate)")
        self.train, self.val = list(train), list(val)
        if steps and not self.train:
            raise ConfigError("FinetuneEvaluator: train has no batch; a fine-tune needs training batches")
        if not self.val:
            raise ConfigError("FinetuneEvaluator: val has no batch; pass held-out training batches to score on")
        self.batches = [self.train[i % len(self.train)] for i in range(steps)]
        base = config if config is not None else TrainConfig(progress=False)
        self.config = base.replace(epochs=1, scheduler="constant", warmup_steps=0, progress=False, device=device,
                                   checkpoint_dir=None, resume=False)
        self.steps, self.device, self.metric, self.calls = steps, device, metric, 0

    def __call__(self, model: nn.Module) -> float:
        self.calls += 1
        if self.batches:
            fit(model, self.batches, self.config)
        res = evaluate(model, self.val, device=self.device)
        return float(res["accuracy"]) if self.metric == "accuracy" else -float(res["loss"])
