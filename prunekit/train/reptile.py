"""Reptile meta-training (Nichol, Achiam & Schulman, "On First-Order Meta-Learning Algorithms", 2018).

Reptile learns an initialisation θ from which a few gradient steps fit a new task. One meta-iteration: for each
of ``meta_batch`` tasks, start from θ and take ``inner_steps`` optimizer steps on the task's examples, ending at
φ_i; then move θ toward the tasks' solutions, ``θ ← θ + ε (mean_i φ_i − θ)``, with the meta step ε annealed
linearly from ``meta_step`` to ``meta_step_final`` over the run. Evaluation adapts a copy of θ to a task's support
examples and scores its query examples (transductively in the reference code: BatchNorm uses the query batch's
statistics).

:class:`Reptile` runs that loop through the same training step as :func:`prunekit.train.fit`, with its callbacks:
each inner step calls ``on_batch_start``, ``on_before_backward``, ``on_after_backward`` and ``on_after_step``;
a meta-iteration is bracketed by ``on_epoch_start`` / ``on_epoch_end`` (``state.epoch`` = the meta-iteration),
so a schedule that switches masks per epoch switches them per meta-iteration here. Masks of
:mod:`prunekit.masks` hold through it: a masked weight is zero in every φ_i and θ, so it stays zero in θ.
As in the reference code, the inner optimizer's state (Adam with β1 = 0 there) persists across tasks; every
floating-point entry of the state dict (BatchNorm running statistics too) takes the outer update.

Example:
    >>> import torch
    >>> from prunekit.data.episodes import EpisodeSampler
    >>> torch.manual_seed(0) and None
    >>> x, y = torch.randn(40, 4), torch.arange(4).repeat(10)
    >>> net = torch.nn.Linear(4, 2)
    >>> r = Reptile(net, inner_steps=2, inner_batch=4, inner_lr=0.01, ways=2)
    >>> hist = r.train(EpisodeSampler(x, y, range(4), ways=2), iterations=3, meta_batch=2, shots=4)
    >>> len(hist), round(hist[-1]["epsilon"], 4)
    (3, 0.3333)
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.episodes import Episode, EpisodeSampler
from .callbacks import TrainState, call
from .config import TrainConfig
from .loop import _step
from .optim import make_optimizer, make_scheduler

__all__ = ["Reptile", "meta_step_size", "reptile_update_"]


def meta_step_size(iteration: int, iterations: int, start: float, final: float) -> float:
    """ε at ``iteration`` of ``iterations``: linear from ``start`` to ``final`` (the reference's annealing).

    Example:
        >>> [meta_step_size(i, 4, 1.0, 0.0) for i in range(4)]
        [1.0, 0.75, 0.5, 0.25]
    """
    frac = iteration / max(iterations, 1)
    return frac * final + (1 - frac) * start


@torch.no_grad()
def reptile_update_(model: nn.Module, theta: dict, phis: Sequence[dict], epsilon: float) -> float:
    """Set ``model``'s state to ``θ + ε (mean φ − θ)`` (floating-point entries; others from the last φ) and
    return the mean over tasks of ``‖φ_i − θ‖`` (the inner loop's displacement)."""
    state = model.state_dict()
    moved = 0.0
    for phi in phis:
        moved += float(torch.sqrt(sum(((phi[k] - theta[k]).double() ** 2).sum() for k in theta
                                      if theta[k].is_floating_point())))
    for k, t in theta.items():
        if t.is_floating_point():
            mean = torch.stack([phi[k] for phi in phis]).mean(0)
            state[k].copy_(t + epsilon * (mean - t))
        else:
            state[k].copy_(phis[-1][k])
    return moved / max(len(phis), 1)


def _snapshot(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Reptile:
    """Reptile on ``model`` in place (module docstring). Tasks are :class:`~prunekit.data.episodes.Episode`;
    the loss is the cross-entropy of the first ``ways`` logits (a wider head is allowed)."""

    def __init__(self, model: nn.Module, *, ways: int, inner_steps: int = 8, inner_batch: int = 10,
                 inner_lr: float = 1e-3, optimizer: str = "adam", callbacks: Sequence = (), device="cpu",
                 seed: int = 0):
        self.model, self.ways, self.callbacks = model, int(ways), list(callbacks)
        self.inner_steps, self.inner_batch = int(inner_steps), int(inner_batch)
        # Adam with beta1 = 0 (reference code); momentum doubles as beta1 in TrainConfig
        cfg = TrainConfig(optimizer=optimizer, lr=inner_lr, momentum=0.0, weight_decay=0.0, scheduler="constant",
                          progress=False, device=str(device), seed=seed)
        opt = make_optimizer(model, cfg)
        self.state = TrainState(model=model, optimizer=opt, scheduler=make_scheduler(opt, 1, cfg), config=cfg)
        self.state.extra["device"] = torch.device(device)
        self.state.extra["scaler"] = torch.amp.GradScaler("cuda", enabled=False)
        self.generator = torch.Generator().manual_seed(seed)
        self.started = False

    def _loss(self, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out[:, :self.ways].float(), targets)

    def adapt(self, episode: Episode, steps: int, batch: int) -> None:
        """``steps`` inner optimizer steps on mini-batches of the episode's support set, in place."""
        dev = self.state.extra["device"]
        self.model.train()
        for i, (x, y) in enumerate(episode.batches(batch, steps, self.generator)):
            self.state.batch_idx, self.state.inputs, self.state.targets = i, x.to(dev), y.to(dev)
            call(self.callbacks, "on_batch_start", self.state)
            _step(self.model, self.state, self._loss, None, self.callbacks)
        self.state.inputs = self.state.targets = self.state.outputs = None

    def meta_step(self, episodes: Sequence[Episode], epsilon: float) -> float:
        """One outer update over ``episodes``; returns the mean displacement ``‖φ_i − θ‖``."""
        theta = _snapshot(self.model)
        phis = []
        for ep in episodes:
            self.adapt(ep, self.inner_steps, self.inner_batch)
            phis.append(_snapshot(self.model))
            self.model.load_state_dict(theta)
        return reptile_update_(self.model, theta, phis, epsilon)

    def train(self, sampler: EpisodeSampler, *, iterations: int, meta_batch: int = 5, shots: int = 15,
              meta_step: float = 1.0, meta_step_final: float = 0.0, start: int = 0) -> list[dict]:
        """Meta-iterations ``start .. iterations-1`` (ε annealed over ``iterations``); one record per iteration."""
        if not self.started:
            call(self.callbacks, "on_train_start", self.state)
            self.started = True
        history = []
        for it in range(start, iterations):
            self.state.epoch = it
            call(self.callbacks, "on_epoch_start", self.state)
            eps = meta_step_size(it, iterations, meta_step, meta_step_final)
            moved = self.meta_step([sampler.episode(shots) for _ in range(meta_batch)], eps)
            history.append({"iteration": it, "epsilon": eps, "displacement": moved})
            self.state.history.append(history[-1])
            call(self.callbacks, "on_epoch_end", self.state)
        return history

    def end(self) -> None:
        """Call the callbacks' ``on_train_end`` (once training is over)."""
        call(self.callbacks, "on_train_end", self.state)

    def evaluate(self, episode: Episode, *, steps: int = 50, batch: int = 5, transductive: bool = True) -> float:
        """Accuracy on the episode's queries after ``steps`` inner steps on its support set; the model and the
        optimizer state are restored afterwards. ``transductive``: the queries go through in training mode (one
        batch, BatchNorm on their own statistics), as in the reference evaluation."""
        theta, opt_state = _snapshot(self.model), copy.deepcopy(self.state.optimizer.state_dict())
        try:
            self.adapt(episode, steps, batch)
            self.model.train(transductive)
            with torch.no_grad():
                out = self.model(episode.query_x.to(self.state.extra["device"]))[:, :self.ways]
            return float((out.argmax(1).cpu() == episode.query_y).float().mean())
        finally:
            self.model.load_state_dict(theta)
            self.state.optimizer.load_state_dict(opt_state)
            self.model.train()

    def few_shot_accuracy(self, sampler: EpisodeSampler, *, episodes: int, shots: int, queries: int,
                          steps: int = 50, batch: int = 5, transductive: bool = True) -> float:
        """Mean :meth:`evaluate` accuracy over ``episodes`` tasks drawn from ``sampler``."""
        accs = [self.evaluate(sampler.episode(shots, queries), steps=steps, batch=batch, transductive=transductive)
                for _ in range(episodes)]
        return sum(accs) / len(accs)
