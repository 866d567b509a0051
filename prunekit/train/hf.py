"""Run a prunekit :class:`~prunekit.train.Callback` inside the Hugging Face ``transformers.Trainer``.

Hook mapping (transformers 5.x -> prunekit): ``on_train_begin`` -> ``on_train_start``; ``on_epoch_begin`` ->
``on_epoch_start``; ``on_step_begin`` -> ``on_batch_start`` (the Trainer does not expose the batch:
``state.inputs`` is ``None``); ``on_pre_optimizer_step`` -> ``on_before_backward`` then
``on_after_backward``; ``on_step_end`` -> ``on_after_step``; ``on_epoch_end`` -> ``on_epoch_end``;
``on_train_end`` -> ``on_train_end``. ``state.stop`` sets ``control.should_training_stop``.

The Trainer has no hook between the loss and its backward pass, so ``on_before_backward`` runs once per
optimizer step, after the backward (and after the Trainer's gradient clipping), on a stand-in loss of
value 0: a term the callback adds is back-propagated then, which gives the same gradient as adding it to
the (accumulation-averaged) loss, because the term depends only on the parameters.
"""
from __future__ import annotations

import torch
from transformers import TrainerCallback

from ._adapter import check_callback, run_loss_hook
from .callbacks import Callback, TrainState


class HFCallback(TrainerCallback):
    """Adapt ``cb`` to ``transformers.Trainer(callbacks=[HFCallback(cb)])``."""

    def __init__(self, cb: Callback):
        self.cb = check_callback(cb, "HFCallback")
        self.state: TrainState | None = None
        self._epochs_started = 0

    def _sync(self, args, hf_state, control, kwargs) -> TrainState:
        if self.state is None:
            self.state = TrainState(model=kwargs.get("model"), extra={"args": args})
        s = self.state
        s.model = kwargs.get("model", s.model)
        s.optimizer = kwargs.get("optimizer", s.optimizer)
        s.scheduler = kwargs.get("lr_scheduler", s.scheduler)
        s.step = hf_state.global_step
        s.extra["hf_state"], s.extra["control"] = hf_state, control
        return s

    def _control(self, control):
        if self.state is not None and self.state.stop:
            control.should_training_stop = True
        return control

    def on_train_begin(self, args, state, control, **kwargs):
        self.cb.on_train_start(self._sync(args, state, control, kwargs))
        return self._control(control)

    def on_epoch_begin(self, args, state, control, **kwargs):
        s = self._sync(args, state, control, kwargs)
        s.epoch, self._epochs_started = self._epochs_started, self._epochs_started + 1
        self.cb.on_epoch_start(s)
        return self._control(control)

    def on_step_begin(self, args, state, control, **kwargs):
        s = self._sync(args, state, control, kwargs)
        s.inputs = s.targets = None
        self.cb.on_batch_start(s)
        return self._control(control)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        s = self._sync(args, state, control, kwargs)
        param = next(s.model.parameters())
        run_loss_hook(self.cb, s, torch.zeros((), device=param.device, dtype=torch.float32))
        self.cb.on_after_backward(s)
        return self._control(control)

    def on_step_end(self, args, state, control, **kwargs):
        self.cb.on_after_step(self._sync(args, state, control, kwargs))
        return self._control(control)

    def on_epoch_end(self, args, state, control, **kwargs):
        s = self._sync(args, state, control, kwargs)
        logs = [r for r in state.log_history if "loss" in r]
        s.history.append({"epoch": s.epoch, **({"train_loss": logs[-1]["loss"]} if logs else {})})
        self.cb.on_epoch_end(s)
        return self._control(control)

    def on_train_end(self, args, state, control, **kwargs):
        self.cb.on_train_end(self._sync(args, state, control, kwargs))
        return self._control(control)
