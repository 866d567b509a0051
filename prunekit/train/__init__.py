"""Training: one short :func:`fit` with callback hooks, :func:`evaluate`, checkpoints, DDP, adapters.

Example:
    >>> import torch
    >>> from prunekit.train import TrainConfig, fit, evaluate
    >>> x, y = torch.randn(32, 3), torch.randint(0, 2, (32,))
    >>> model = torch.nn.Linear(3, 2)
    >>> res = fit(model, [(x, y)], TrainConfig(epochs=1, progress=False))
    >>> evaluate(model, [(x, y)])["n"]
    32

The Lightning and Hugging Face adapters live in :mod:`prunekit.train.lightning` and
:mod:`prunekit.train.hf` (they import those frameworks); baselines in :mod:`prunekit.train.baseline`.
"""
from __future__ import annotations

from .callbacks import HOOKS, Callback, TrainState
from .checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from .config import OPTIMIZERS, SCHEDULERS, TrainConfig
from .loop import FitResult, evaluate, fit
from .optim import lr_factor, make_optimizer, make_scheduler

__all__ = ["TrainConfig", "fit", "evaluate", "FitResult", "Callback", "TrainState", "HOOKS", "make_optimizer",
           "make_scheduler", "lr_factor", "save_checkpoint", "load_checkpoint", "has_checkpoint", "OPTIMIZERS",
           "SCHEDULERS"]
