"""`TrainConfig`: every knob of :func:`prunekit.train.fit`, validated up front."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any

from .._registry import unknown_name_message
from ..errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("constant", "step", "cosine", "onecycle")
_TYPE_NAME = "prunekit.TrainConfig"
_VERSION = 1


@dataclass(frozen=True)
class TrainConfig:
    """How :func:`~prunekit.train.fit` trains. Frozen; build a changed copy with ``dataclasses.replace``.

    Learning-rate schedules are applied per optimizer step (not per epoch), so a run resumed mid-epoch
    continues on the same curve.

    Example:
        >>> cfg = TrainConfig(epochs=2, lr=0.05, scheduler="step")
        >>> TrainConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    epochs: int = 1  # passes over train_data
    lr: float = 0.1  # peak learning rate (after warm-up; the one-cycle maximum)
    optimizer: str = "sgd"  # sgd | adam | adamw
    momentum: float = 0.9  # SGD momentum (Adam/AdamW: beta1)
    nesterov: bool = False  # SGD only
    weight_decay: float = 5e-4  # L2 (sgd, adam) or decoupled (adamw) decay, per step, times lr
    scheduler: str = "cosine"  # constant | step | cosine | onecycle; evaluated per optimizer step
    warmup_steps: int = 0  # optimizer steps of linear warm-up from 0 to lr (not used by onecycle)
    lr_milestones: tuple = (0.5, 0.75)  # step scheduler: fractions of the total steps where lr is cut
    lr_gamma: float = 0.1  # step scheduler: factor applied at each milestone
    min_lr: float = 0.0  # cosine: the final learning rate
    label_smoothing: float = 0.0  # in [0, 1)
    kd_alpha: float = 0.0  # weight of the distillation term in [0, 1]; 0 = no distillation
    kd_temperature: float = 4.0  # softmax temperature of the distillation term (> 0)
    grad_clip_norm: float = 0.0  # max global L2 norm of the gradients; 0 = no clipping
    seed: int = 0  # seeds torch, numpy and random at the start of fit
    deterministic: bool = False  # torch.use_deterministic_algorithms + cudnn.deterministic
    device: str = "cpu"  # "cpu", "cuda", "cuda:N"; under torchrun, cuda uses the local rank's GPU
    amp: bool = False  # bfloat16/float16 autocast + grad scaling; needs a CUDA device (ConfigError on CPU)
    progress: bool = True  # rich progress bar (also off when stderr is not a TTY or PRUNEKIT_PROGRESS=0)
    checkpoint_dir: str | None = None  # directory of the rolling checkpoint; None = no checkpoints
    checkpoint_every: int = 0  # optimizer steps between checkpoints (0 = only at epoch ends)
    resume: bool = False  # continue from checkpoint_dir's checkpoint when one exists

    def __post_init__(self) -> None:
        if isinstance(self.lr_milestones, list):
            object.__setattr__(self, "lr_milestones", tuple(self.lr_milestones))
        problems = [p for p in (_check(self, f) for f in fields(self)) if p]
        problems += _check_relations(self)
        if problems:
            raise ConfigError("invalid TrainConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict carrying the type name and format version."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["lr_milestones"] = list(self.lr_milestones)
        return {"type": _TYPE_NAME, "version": _VERSION, **d}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys and other types/versions are a ConfigError."""
        data = dict(data)
        kind, version = data.pop("type", _TYPE_NAME), data.pop("version", _VERSION)
        if kind != _TYPE_NAME:
            raise ConfigError(f"type={kind!r} is not a TrainConfig; expected type={_TYPE_NAME!r}")
        if version != _VERSION:
            raise ConfigError(f"TrainConfig version={version!r} is not supported; this prunekit reads {_VERSION}")
        names = [f.name for f in fields(cls)]
        bad = [k for k in data if k not in names]
        if bad:
            raise ConfigError("; ".join(unknown_name_message("TrainConfig field", k, names) for k in bad))
        return cls(**data)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)


_CHOICES = {"optimizer": OPTIMIZERS, "scheduler": SCHEDULERS}
_RANGES = {  # field -> (low, high, low inclusive, description of the fix)
    "epochs": (1, math.inf, True, "use at least 1 epoch"),
    "lr": (0.0, math.inf, False, "use a positive learning rate such as 0.1"),
    "momentum": (0.0, 1.0, True, "use a value in [0, 1), e.g. 0.9"),
    "weight_decay": (0.0, math.inf, True, "use 0 or a small positive value such as 5e-4"),
    "warmup_steps": (0, math.inf, True, "use 0 (no warm-up) or a positive number of steps"),
    "lr_gamma": (0.0, 1.0, False, "use a factor in (0, 1], e.g. 0.1"),
    "min_lr": (0.0, math.inf, True, "use 0 or a positive value below lr"),
    "label_smoothing": (0.0, 1.0, True, "use a value in [0, 1), e.g. 0.1"),
    "kd_alpha": (0.0, 1.0, True, "use a weight in [0, 1]"),
    "kd_temperature": (0.0, math.inf, False, "use a positive temperature such as 4.0"),
    "grad_clip_norm": (0.0, math.inf, True, "use 0 (off) or a positive norm such as 5.0"),
    "checkpoint_every": (0, math.inf, True, "use 0 (epoch ends only) or a positive number of steps"),
}


def _check(cfg: TrainConfig, f: dataclasses.Field) -> str | None:
    name, value = f.name, getattr(cfg, f.name)
    expected = {"int": int, "float": (int, float), "bool": bool, "str": str}.get(str(f.type))
    if expected is not None and (not isinstance(value, expected) or (expected is not bool and isinstance(value, bool))):
        return f"{name}={value!r} must be of type {f.type}; pass e.g. {f.default!r}"
    if name in _CHOICES and value not in _CHOICES[name]:
        return unknown_name_message(name, value, _CHOICES[name], name)
    if name in _RANGES:
        lo, hi, lo_inclusive, fix = _RANGES[name]
        ok = (value >= lo if lo_inclusive else value > lo) and (value <= hi if name in ("kd_alpha", "lr_gamma") else value < hi)
        if not ok or (isinstance(value, float) and math.isnan(value)):
            return f"{name}={value!r} is out of range; {fix}"
    if name == "checkpoint_dir" and value is not None and not isinstance(value, str):
        return f"checkpoint_dir={value!r} must be a path string or None"
    if name == "device" and not (value == "cpu" or value == "cuda" or value.startswith("cuda:") or value == "mps"):
        return f"device={value!r} is not a device; use 'cpu', 'cuda' or 'cuda:N'"
    return None


def _check_relations(cfg: TrainConfig) -> list[str]:
    out = []
    ms = cfg.lr_milestones
    if not all(isinstance(m, (int, float)) and 0 < m < 1 for m in ms) or list(ms) != sorted(ms):
        out.append(f"lr_milestones={ms!r} must be increasing fractions of training in (0, 1), e.g. (0.5, 0.75)")
    if cfg.amp and not cfg.device.startswith("cuda"):
        out.append(f"amp=True needs a CUDA device but device={cfg.device!r}; set amp=False on CPU "
                   "(prunekit never turns mixed precision off silently)")
    if cfg.resume and cfg.checkpoint_dir is None:
        out.append("resume=True needs checkpoint_dir; set checkpoint_dir to the run's checkpoint directory")
    if cfg.nesterov and cfg.optimizer != "sgd":
        out.append(f"nesterov=True only applies to optimizer='sgd', not {cfg.optimizer!r}; set nesterov=False")
    if cfg.min_lr >= cfg.lr and cfg.scheduler == "cosine":
        out.append(f"min_lr={cfg.min_lr!r} must be below lr={cfg.lr!r} for the cosine schedule")
    return out


def method_train_config(ctx: Any, epochs: int | None = None, **changes: Any) -> TrainConfig:
    """The TrainConfig of a method's own training (before its cut): ``ctx.train_config`` (or the default,
    without a progress bar) with ``epochs`` (default: ``ctx.prune_epochs``), the context's seed and device,
    then ``changes``. The one builder every method uses; ``prunekit run --resume`` checkpoints each
    :func:`~prunekit.train.fit` call of a method through :func:`prunekit.train.fit_checkpoints`, not here.

    Example:
        >>> from types import SimpleNamespace
        >>> ctx = SimpleNamespace(train_config=None, prune_epochs=3, seed=1, device="cpu")
        >>> cfg = method_train_config(ctx, scheduler="constant")
        >>> cfg.epochs, cfg.seed, cfg.scheduler
        (3, 1, 'constant')
    """
    base = ctx.train_config if ctx.train_config is not None else TrainConfig(progress=False)
    epochs = ctx.prune_epochs if epochs is None else epochs
    return base.replace(**{"epochs": int(epochs), "seed": ctx.seed, "device": ctx.device, **changes})
