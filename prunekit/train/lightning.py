"""Run a prunekit :class:`~prunekit.train.Callback` inside a PyTorch Lightning ``Trainer``.

Hook mapping (Lightning -> prunekit): ``on_train_start`` -> ``on_train_start``; ``on_train_epoch_start`` ->
``on_epoch_start``; ``on_train_batch_start`` -> ``on_batch_start``; ``on_before_backward`` ->
``on_before_backward`` (terms the callback adds to ``state.loss`` are back-propagated, see
:func:`prunekit.train._adapter.run_loss_hook`); ``on_after_backward`` -> ``on_after_backward``;
``on_train_batch_end`` after an optimizer step -> ``on_after_step``; ``on_train_epoch_end`` ->
``on_epoch_end``; ``on_train_end`` -> ``on_train_end``. ``state.stop`` sets ``trainer.should_stop``.

``state.outputs`` is what ``fit`` gives: the network's output (``.logits`` of a model output, the first item of
a tuple) from the step's first forward in training mode, still attached to the graph in ``on_before_backward``
(a forward hook on the network the callback acts on records it).

Example:
    >>> from prunekit.train import Callback
    >>> LightningCallback(Callback()).cb.__class__.__name__
    'Callback'
"""
from __future__ import annotations

import lightning.pytorch as pl
import torch

from ._adapter import check_callback, run_loss_hook
from .loop import output_logits
from .callbacks import Callback, TrainState


class LightningCallback(pl.Callback):
    """Adapt ``cb`` to Lightning. ``module``: attribute of the LightningModule holding the network the
    callback acts on (so FQNs match a plain ``fit``); ``None`` hands it the LightningModule itself."""

    def __init__(self, cb: Callback, *, module: str | None = None):
        super().__init__()
        self.cb = check_callback(cb, "LightningCallback")
        self.module = module
        self.state: TrainState | None = None
        self._last_step = 0
        self._hook = None

    def _sync(self, trainer, pl_module) -> TrainState:
        if self.state is None:
            model = getattr(pl_module, self.module) if self.module else pl_module
            self.state = TrainState(model=model, extra={"trainer": trainer})
        s = self.state
        s.optimizer = trainer.optimizers[0] if trainer.optimizers else None
        s.scheduler = trainer.lr_scheduler_configs[0].scheduler if trainer.lr_scheduler_configs else None
        s.epoch, s.step = trainer.current_epoch, trainer.global_step
        s.rank, s.world_size = trainer.global_rank, trainer.world_size
        return s

    def _stop(self, trainer) -> None:
        if self.state is not None and self.state.stop:
            trainer.should_stop = True

    def on_train_start(self, trainer, pl_module) -> None:
        self._last_step = trainer.global_step
        self.cb.on_train_start(self._sync(trainer, pl_module))

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.cb.on_epoch_start(self._sync(trainer, pl_module))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        s = self._sync(trainer, pl_module)
        s.batch_idx = batch_idx
        s.inputs, s.targets = batch if isinstance(batch, (tuple, list)) and len(batch) == 2 else (batch, None)
        s.outputs = None
        if self._hook is None:
            self._hook = s.model.register_forward_hook(self._record_outputs)
        self.cb.on_batch_start(s)

    def _record_outputs(self, module, args, output) -> None:
        s = self.state
        if s is not None and s.outputs is None and module.training and torch.is_grad_enabled():
            s.outputs = output_logits(output)

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        run_loss_hook(self.cb, self._sync(trainer, pl_module), loss)

    def on_after_backward(self, trainer, pl_module) -> None:
        self.cb.on_after_backward(self._sync(trainer, pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._last_step:  # gradient accumulation: no optimizer step this batch
            return
        self._last_step = trainer.global_step
        s = self._sync(trainer, pl_module)
        self.cb.on_after_step(s)
        self._stop(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        s = self._sync(trainer, pl_module)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
        s.history.append({"epoch": s.epoch, **metrics})
        self.cb.on_epoch_end(s)
        self._stop(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.cb.on_train_end(self._sync(trainer, pl_module))
