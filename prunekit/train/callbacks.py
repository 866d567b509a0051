"""`Callback` (no-op hooks), `TrainState` (what every hook sees and may change) and `WeightSTE` (training through
quantised weights with a straight-through update)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

HOOKS = ("on_train_start", "on_epoch_start", "on_batch_start", "on_before_backward", "on_after_backward",
         "on_after_step", "on_epoch_end", "on_train_end")


@dataclass
class TrainState:
    """The mutable state of a training run, handed to every hook.

    ``model`` is the user's module (never the DDP wrapper), so callbacks see the same FQNs everywhere.
    ``step`` counts optimizer steps since the start of training; ``batch_idx`` is the batch within the
    epoch. A regulariser adds to ``loss`` in ``on_before_backward``; setting ``stop`` ends training after the
    current batch.
    """

    model: Any
    optimizer: Any = None
    scheduler: Any = None
    config: Any = None
    epoch: int = 0
    step: int = 0
    batch_idx: int = 0
    inputs: Any = None
    targets: Any = None
    outputs: Any = None
    loss: Any = None
    history: list = field(default_factory=list)  # one dict per finished epoch
    stop: bool = False
    rank: int = 0
    world_size: int = 1
    extra: dict = field(default_factory=dict)  # free space for callbacks to share values


class Callback:
    """Base class of training callbacks: override the hooks you need; all default to doing nothing.

    The same subclass runs in :func:`prunekit.train.fit`, in Lightning
    (:class:`prunekit.train.lightning.LightningCallback`) and in the Hugging Face Trainer
    (:class:`prunekit.train.hf.HFCallback`).

    Example:
        >>> class CountSteps(Callback):
        ...     def __init__(self):
        ...         self.n = 0
        ...     def on_after_step(self, state):
        ...         self.n += 1
        >>> CountSteps().n
        0
    """

    def on_train_start(self, state: TrainState) -> None:
        """Once, before the first batch (also after a resume)."""

    def on_epoch_start(self, state: TrainState) -> None:
        """At the start of each epoch."""

    def on_batch_start(self, state: TrainState) -> None:
        """Before the forward; ``state.inputs``/``state.targets`` hold the batch."""

    def on_before_backward(self, state: TrainState) -> None:
        """The loss is in ``state.loss``; add a regularisation term to it here."""

    def on_after_backward(self, state: TrainState) -> None:
        """Gradients are ready, before the optimizer step: edit or mask gradients here."""

    def on_after_step(self, state: TrainState) -> None:
        """After the optimizer step: projections, re-masking, schedules."""

    def on_epoch_end(self, state: TrainState) -> None:
        """After each epoch; ``state.history[-1]`` holds its metrics (validation included)."""

    def on_train_end(self, state: TrainState) -> None:
        """Once, at the end of training."""


def overridden_hooks(cb: Callback) -> list[str]:
    """The hooks ``cb``'s class overrides (compared with :class:`Callback`)."""
    return [h for h in HOOKS if getattr(type(cb), h, None) is not getattr(Callback, h)]


def call(callbacks, hook: str, state: TrainState) -> None:
    for cb in callbacks:
        getattr(cb, hook)(state)


class WeightSTE(Callback):
    """Training through quantised weights with a straight-through update (reusable by any quantising method).

    Holds full-precision copies of the parameters ``fqns``. Before each forward a parameter is set to
    ``quantized(fqn, full)``; after the backward it is set back to the full-precision values, so the optimizer
    step applies the gradient taken at the quantised weights to the full-precision ones, which are then kept.
    At the end of training the parameters hold the quantised weights. ``quantized`` is the constructor argument
    or an override in a subclass.
    """

    def __init__(self, model, fqns, quantized=None):
        self.fqns = list(fqns)
        self.full = {f: model.get_parameter(f).detach().clone() for f in self.fqns}
        self._fn = quantized
        self.steps = 0

    def quantized(self, fqn: str, full: torch.Tensor) -> torch.Tensor:
        return self._fn(fqn, full)

    def quantize_(self, model) -> None:
        """Write the quantised copy of the full-precision weights into the model."""
        with torch.no_grad():
            for f in self.fqns:
                model.get_parameter(f).copy_(self.quantized(f, self.full[f]))

    def on_batch_start(self, state) -> None:
        self.quantize_(state.model)

    def on_after_backward(self, state) -> None:
        with torch.no_grad():
            for f in self.fqns:
                state.model.get_parameter(f).copy_(self.full[f])

    def on_after_step(self, state) -> None:
        self.steps += 1
        for f in self.fqns:
            self.full[f] = state.model.get_parameter(f).detach().clone()

    def on_train_end(self, state) -> None:
        self.quantize_(state.model)
