"""What the Lightning and Hugging Face adapters share: running a prunekit loss hook outside fit."""
from __future__ import annotations

import torch

from ..errors import ConfigError
from .callbacks import Callback, TrainState, overridden_hooks


def check_callback(cb: Callback, adapter: str) -> Callback:
    if not isinstance(cb, Callback):
        raise ConfigError(f"{adapter}(cb={cb!r}): cb must be a prunekit.train.Callback instance; subclass Callback")
    return cb


def run_loss_hook(cb: Callback, state: TrainState, value: torch.Tensor) -> None:
    """Run ``cb.on_before_backward`` and back-propagate only what it *added* to the loss.

    The framework back-propagates its own loss; the callback sees a detached stand-in of value ``value``
    and may return ``stand_in + term``. The term's gradient is accumulated into ``.grad`` here, which is
    exactly what back-propagating ``loss + term`` would give. Rescaling or replacing the loss cannot be
    expressed this way and is refused.
    """
    if "on_before_backward" not in overridden_hooks(cb):
        return
    proxy = value.detach().clone().requires_grad_(True)
    state.loss = proxy
    cb.on_before_backward(state)
    new, state.loss = state.loss, value
    if new is proxy:
        return
    if not (torch.is_tensor(new) and new.requires_grad):
        raise ConfigError(f"{type(cb).__name__}.on_before_backward set state.loss to {new!r}; inside Lightning/HF it "
                          "may only add a differentiable term (state.loss = state.loss + term)")
    new.backward()
    if proxy.grad is None or not torch.allclose(proxy.grad, torch.ones_like(proxy)):
        raise ConfigError(f"{type(cb).__name__}.on_before_backward rescaled or replaced state.loss; inside "
                          "Lightning/HF it may only add a term (state.loss = state.loss + term): move the rescaling "
                          "into the framework's loss")
