"""Optimizers and per-step learning-rate schedules built from a :class:`TrainConfig`."""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig


def make_optimizer(model: nn.Module, config: TrainConfig | None = None) -> torch.optim.Optimizer:
    """The optimizer ``config`` names over ``model``'s trainable parameters.

    Methods call it again after surgery, when parameters changed shape.

    Example:
        >>> opt = make_optimizer(nn.Linear(2, 2), TrainConfig(optimizer="adamw", lr=1e-3))
        >>> type(opt).__name__, opt.param_groups[0]["lr"]
        ('AdamW', 0.001)
    """
    cfg = config or TrainConfig()
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)


def lr_factor(step: int, total_steps: int, config: TrainConfig) -> float:
    """Multiplier of ``config.lr`` at optimizer step ``step`` (0-based) of ``total_steps``; a pure function.

    Example:
        >>> cfg = TrainConfig(scheduler="step", lr_milestones=(0.5,), lr_gamma=0.1)
        >>> [lr_factor(s, 4, cfg) for s in range(4)]
        [1.0, 1.0, 0.1, 0.1]
    """
    cfg = config
    total = max(int(total_steps), 1)
    if cfg.scheduler == "onecycle":  # 30 % linear ramp from lr/25, then cosine anneal to lr/1e4
        peak = max(int(0.3 * total), 1)
        if step < peak:
            return 1 / 25 + (1 - 1 / 25) * step / peak
        t = min((step - peak) / max(total - peak, 1), 1.0)
        return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * t))
    if step < cfg.warmup_steps:
        return (step + 1) / (cfg.warmup_steps + 1)
    if cfg.scheduler == "constant":
        return 1.0
    if cfg.scheduler == "step":
        return cfg.lr_gamma ** sum(step >= m * total for m in cfg.lr_milestones)
    t = min((step - cfg.warmup_steps) / max(total - cfg.warmup_steps, 1), 1.0)  # cosine
    floor = cfg.min_lr / cfg.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int,
                   config: TrainConfig | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following :func:`lr_factor`; call ``.step()`` after every optimizer step."""
    cfg = config or TrainConfig()
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, cfg))
