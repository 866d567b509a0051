"""Training callbacks that drive the schedules: gradual pruning, dynamic mask updates, rewinding."""
from __future__ import annotations

import copy
import logging
import random
from typing import Callable

import torch

from ..errors import ConfigError
from ..train.callbacks import Callback, TrainState
from ..masks import get_masks, sparsify_, update_masks_

log = logging.getLogger(__name__)

__all__ = ["GradualPruning", "MaskUpdate", "RewindPoints", "LRReplay"]


class GradualPruning(Callback):
    """Raise the sparsity to ``schedule(step)`` whenever it grows (AGP, iterative), with ``sparsify_``.

    ``schedule`` is a pure function ``step -> sparsity``; ``sparsify_kwargs`` go to
    :func:`prunekit.masks.sparsify_` (criterion, pattern, ignore, ...). Masks only grow.

    Example:
        >>> from functools import partial
        >>> from prunekit.schedules import agp_cubic
        >>> cb = GradualPruning(partial(agp_cubic, final=0.9, start=0, n=10, frequency=100))
        >>> cb.history
        []
    """

    def __init__(self, schedule: Callable[[int], float], **sparsify_kwargs):
        self.schedule = schedule
        self.kwargs = sparsify_kwargs
        self.current = 0.0
        self.history: list[tuple[int, float]] = []  # (step, sparsity) at each pruning event

    def _maybe_prune(self, state: TrainState) -> None:
        target = float(self.schedule(state.step))
        if target > self.current + 1e-12:
            report = sparsify_(state.model, sparsity=target, **self.kwargs)
            self.current = target
            self.history.append((state.step, report.sparsity))
            log.debug("step %d: sparsity %.4f", state.step, report.sparsity)

    def on_train_start(self, state: TrainState) -> None:
        self._maybe_prune(state)

    def on_after_step(self, state: TrainState) -> None:
        self._maybe_prune(state)


class MaskUpdate(Callback):
    """Dynamic masks: every ``frequency`` steps, with probability ``probability(step)``, replace the masks
    with ``compute(model, step) -> {param_fqn: mask}`` (masks may shrink as well as grow: DNS, DPF).

    ``splices`` counts mask entries that went 0 → 1 (weights brought back) and ``prunes`` 1 → 0.
    """

    def __init__(self, compute: Callable, *, frequency: int = 1, probability: Callable[[int], float] | None = None,
                 seed: int = 0):
        if not isinstance(frequency, int) or frequency < 1:
            raise ConfigError(f"frequency={frequency!r} must be a positive int (optimizer steps between updates)")
        self.compute, self.frequency, self.probability = compute, frequency, probability
        self.rng = random.Random(seed)
        self.splices = 0
        self.prunes = 0
        self.updates = 0

    def on_after_step(self, state: TrainState) -> None:
        if state.step % self.frequency:
            return
        if self.probability is not None and self.rng.random() >= self.probability(state.step):
            return
        old = {k: v.clone() for k, v in get_masks(state.model).items()}
        new = self.compute(state.model, state.step)
        if not new:
            return
        update_masks_(state.model, new)
        for fqn, mask in new.items():
            mask = mask.bool()
            self.splices += int((mask & ~old[fqn]).sum())
            self.prunes += int((~mask & old[fqn]).sum())
        self.updates += 1


class RewindPoints(Callback):
    """Keep copies of the model's weights at chosen optimizer steps (0 = before training) for rewinding.

    Example:
        >>> import torch
        >>> cb = RewindPoints([0])
        >>> cb.weights(3)
        Traceback (most recent call last):
        ...
        prunekit.errors.ConfigError: rewind point step=3 was never saved (saved steps: []); ...
    """

    def __init__(self, steps):
        self.steps = sorted({int(s) for s in steps})
        if any(s < 0 for s in self.steps):
            raise ConfigError(f"steps={list(steps)!r}: rewind points are optimizer steps >= 0")
        self.saved: dict[int, dict[str, torch.Tensor]] = {}

    def _save(self, state: TrainState) -> None:
        if state.step in self.steps and state.step not in self.saved:
            self.saved[state.step] = {k: v.detach().clone() for k, v in state.model.state_dict().items()}

    def on_train_start(self, state: TrainState) -> None:
        self._save(state)

    def on_after_step(self, state: TrainState) -> None:
        self._save(state)

    def weights(self, step: int) -> dict[str, torch.Tensor]:
        if step not in self.saved:
            raise ConfigError(f"rewind point step={step} was never saved (saved steps: {sorted(self.saved)}); "
                              f"ask for it up front, e.g. RewindPoints([{step}]), and train past step {step}")
        return copy.deepcopy(self.saved[step])


class LRReplay(Callback):
    """Set the learning rate of every step to ``base_lr * factor(step)`` (overrides ``fit``'s scheduler).

    With :func:`prunekit.schedules.lr_rewind_factor` this is learning-rate rewinding.
    """

    def __init__(self, factor: Callable[[int], float], base_lr: float):
        self.factor, self.base_lr = factor, float(base_lr)
        self.lrs: list[float] = []

    def on_batch_start(self, state: TrainState) -> None:
        lr = self.base_lr * float(self.factor(state.step))
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        self.lrs.append(lr)
