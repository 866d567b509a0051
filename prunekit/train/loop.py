"""`fit` and `evaluate`: one short training loop with callback hooks, checkpoints, resume and DDP."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError
from . import checkpoint as ckpt
from . import distributed as ddp
from .callbacks import Callback, TrainState, call
from .config import TrainConfig
from .optim import make_optimizer, make_scheduler
from .progress import ProgressBar
from .resume_state import Unrestorable, capture_callbacks, restore_callbacks, session_config

log = logging.getLogger(__name__)

LossFn = Callable[[Any, Any], torch.Tensor]


@dataclass
class FitResult:
    """What :func:`fit` returns: one record per epoch and the last epoch's metrics."""

    history: list = field(default_factory=list)  # per epoch: epoch, train_loss, train_acc, val_*, lr, seconds
    final: dict = field(default_factory=dict)  # the last history record
    steps: int = 0  # optimizer steps taken since the start of training (resumes included)
    resumed_from_step: int | None = None  # the checkpoint step this call resumed from, if any
    stopped_early: bool = False  # a callback set state.stop

    def to_dict(self) -> dict:
        return {"history": self.history, "final": self.final, "steps": self.steps,
                "resumed_from_step": self.resumed_from_step, "stopped_early": self.stopped_early}


def fit(model: nn.Module, train_data: Iterable, config: TrainConfig | None = None, *,
        callbacks: Sequence[Callback] = (), val_data: Iterable | None = None, teacher: nn.Module | None = None,
        loss_fn: LossFn | None = None) -> FitResult:
    """Train ``model`` in place on ``train_data`` (an iterable of ``(inputs, targets)`` batches).

    Learning-rate schedules step per batch; checkpoints are written every ``config.checkpoint_every``
    steps and at each epoch end; ``config.resume`` continues from the last one, mid-epoch included.
    Under ``torchrun`` the model is wrapped in DDP and a DataLoader is sharded (see
    :mod:`prunekit.train.distributed`).

    Example:
        >>> torch.manual_seed(0) and None
        >>> x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
        >>> data = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
        >>> res = fit(nn.Linear(4, 2), data, TrainConfig(epochs=2, lr=0.1, progress=False))
        >>> len(res.history), res.steps
        (2, 8)
    """
    cfg = config or TrainConfig()
    _check_args(cfg, callbacks, teacher)
    cfg = session_config(cfg, callbacks, model)  # inside fit_checkpoints(): this call's own checkpoint folder
    info = ddp.setup(cfg.device)
    try:
        device = _device(cfg, info)
        state, net, data, total = _prepare(model, train_data, cfg, device, info, callbacks)
        loss_fn = loss_fn or _default_loss(cfg.label_smoothing)
        if teacher is not None:
            teacher.to(device).eval()
        with _deterministic(cfg.deterministic), contextlib.ExitStack() as stack:
            call(callbacks, "on_train_start", state)  # before the resume: the checkpoint was written after it
            start = _resume(state, cfg, info, callbacks)
            bar = stack.enter_context(ProgressBar(total, enabled=cfg.progress and info.is_main, initial=state.step))
            for epoch in range(start.epoch, cfg.epochs):
                state.epoch = epoch
                record = _train_epoch(net, data, state, loss_fn, teacher, callbacks, bar, info, start)
                start = _Position(epoch + 1)
                if val_data is not None:
                    record.update({f"val_{k}": v for k, v in evaluate(model, val_data, device=device).items()})
                state.history.append(record)
                if info.is_main:
                    log.info("epoch %d: %s", epoch, _fmt(record))
                call(callbacks, "on_epoch_end", state)
                _save(state, info, _Position(epoch + 1), None, callbacks=callbacks)
                if state.stop:
                    break
            call(callbacks, "on_train_end", state)
        return FitResult(history=state.history, final=dict(state.history[-1]) if state.history else {},
                         steps=state.step, resumed_from_step=state.extra.get("resumed_from_step"),
                         stopped_early=state.stop)
    finally:
        ddp.teardown(info)


@torch.no_grad()
def evaluate(model: nn.Module, data: Iterable, *, device: str | torch.device = "cpu",
             loss_fn: LossFn | None = None) -> dict[str, float]:
    """Accuracy, mean loss and sample count of ``model`` on ``data``; the model's train/eval mode is kept.

    Example:
        >>> m = nn.Linear(2, 2)
        >>> sorted(evaluate(m, [(torch.randn(8, 2), torch.zeros(8, dtype=torch.long))]))
        ['accuracy', 'loss', 'n']
    """
    default_loss = loss_fn is None
    loss_fn = loss_fn or _default_loss(0.0)
    was_training = model.training
    model.eval()
    loss_sum, correct, n, positions = 0.0, torch.zeros((), dtype=torch.long), 0, 0
    try:
        for inputs, targets in data:
            inputs, targets = _to(inputs, device), _to(targets, device)
            out = output_logits(model(inputs))
            k = _count(targets)
            loss_sum += float(loss_fn(out, targets)) * k
            correct += _correct(out, targets).cpu()
            n, positions = n + k, positions + _positions(k, targets)
    finally:
        model.train(was_training)
    if n == 0:
        raise ConfigError("evaluate got no batches: data is empty; pass a non-empty iterable of (inputs, targets)")
    out = {"accuracy": float(correct) / positions, "loss": loss_sum / n, "n": n}
    if positions > n and default_loss:  # sequences: the mean next-token cross-entropy, as a perplexity
        out["perplexity"] = math.exp(min(out["loss"], 700.0))
    return out


# ----------------------------------------------------------------------------------------------- helpers


@dataclass
class _Position:
    epoch: int = 0
    skip: int = 0  # batches of this epoch already done (resume mid-epoch)
    tensors: dict | None = None  # checkpoint tensors holding the RNG states to restore after skipping
    index: dict | None = None


def _check_args(cfg: TrainConfig, callbacks, teacher) -> None:
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(f"config={cfg!r} must be a prunekit.train.TrainConfig; build one with TrainConfig(...)")
    bad = [cb for cb in callbacks if not isinstance(cb, Callback)]
    if bad:
        raise ConfigError(f"callbacks={bad!r} are not prunekit.train.Callback instances; subclass Callback")
    if cfg.kd_alpha > 0 and teacher is None:
        raise ConfigError(f"kd_alpha={cfg.kd_alpha} needs a teacher; pass teacher=<model> or set kd_alpha=0")
    if teacher is not None and cfg.kd_alpha == 0:
        raise ConfigError("teacher was given but kd_alpha=0, so it would be ignored; set kd_alpha in (0, 1]")


def _device(cfg: TrainConfig, info: ddp.DistInfo) -> torch.device:
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={cfg.device!r} but CUDA is not available on this machine; use device='cpu'")
    return ddp.device_for(cfg.device, info)


def _prepare(model, train_data, cfg, device, info, callbacks):
    _seed(cfg.seed)
    model.to(device)
    data = ddp.shard(train_data, info, cfg.seed)
    net = ddp.wrap(model, info, device)
    optimizer = make_optimizer(model, cfg)
    try:
        total = cfg.epochs * len(data)
    except TypeError:
        if cfg.scheduler != "constant":
            raise ConfigError(f"scheduler={cfg.scheduler!r} needs the number of batches, but train_data has no "
                              "len(); pass a DataLoader or list, or use scheduler='constant'") from None
        total = 0
    scheduler = make_scheduler(optimizer, total, cfg)
    state = TrainState(model=model, optimizer=optimizer, scheduler=scheduler, config=cfg,
                       rank=info.rank, world_size=info.world_size)
    state.extra["device"] = device
    state.extra["scaler"] = torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda")
    return state, net, data, total


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def _deterministic(on: bool):
    if not on:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]


def _resume(state: TrainState, cfg: TrainConfig, info: ddp.DistInfo, callbacks=()) -> _Position:
    if not (cfg.resume and ckpt.has_checkpoint(cfg.checkpoint_dir)):
        return _Position()
    index, _ = ckpt.read_checkpoint(cfg.checkpoint_dir)
    _check_same_run(TrainConfig.from_dict(index["config"]), cfg)
    saved_callbacks = index.get("callbacks", None if callbacks else [])
    if saved_callbacks is None:
        log.warning("the checkpoint in %s does not hold the state of the callbacks %s; training starts again from "
                    "step 0 (a resume without it would not continue the same run)", cfg.checkpoint_dir,
                    [type(cb).__name__ for cb in callbacks])
        return _Position()
    index = ckpt.load_checkpoint(cfg.checkpoint_dir, state.model, state.optimizer, state.scheduler)
    restore_callbacks(callbacks, saved_callbacks, index["_tensors"])
    state.step, state.history = int(index["step"]), list(index.get("history", []))
    state.extra["resumed_from_step"] = state.step
    if index.get("partial"):
        state.extra["partial"] = dict(index["partial"])
    pos = _Position(int(index["epoch"]), int(index["skip"]), index["_tensors"], index)
    if pos.skip == 0:  # at an epoch boundary: the epoch-start RNG is the checkpoint's
        ckpt.set_rng_states(pos.tensors, index["rng"])
    log.info("resumed from step %d (epoch %d, batch %d) in %s", state.step, pos.epoch, pos.skip, cfg.checkpoint_dir)
    state.stop = bool(index.get("stop", False))  # a callback had ended the training at that step
    if state.stop and pos.skip == 0:
        return _Position(cfg.epochs)  # it had ended after this epoch: nothing left to train
    return pos


_RUN_FIELDS_FREE = ("deterministic", "device", "amp", "progress", "checkpoint_dir", "checkpoint_every", "resume")


def _check_same_run(saved: TrainConfig, cfg: TrainConfig) -> None:
    """A resume must continue the same run: schedule, optimizer and loss settings may not change."""
    diff = [f"{k}={getattr(saved, k)!r} (now {getattr(cfg, k)!r})" for k in saved.to_dict()
            if k not in ("type", "version", *_RUN_FIELDS_FREE) and getattr(saved, k) != getattr(cfg, k)]
    if diff:
        raise CheckpointError(f"checkpoint in {cfg.checkpoint_dir!r} was written by a different run: {', '.join(diff)}; "
                              "resume with the same settings, or use a new checkpoint_dir to start over")


def _train_epoch(net, data, state, loss_fn, teacher, callbacks, bar, info, start: _Position) -> dict:
    cfg, opt = state.config, state.optimizer
    skip = start.skip if start.epoch == state.epoch else 0
    if skip:  # replay the data order of the interrupted epoch, then continue with the saved RNG state
        ckpt.set_rng_states({k.replace("rng_epoch/", "rng/", 1): v for k, v in start.tensors.items()
                             if k.startswith("rng_epoch/")}, start.index["rng_epoch"])
    epoch_rng = ckpt._rng_states()
    call(callbacks, "on_epoch_start", state)
    ddp.set_epoch(data, state.epoch)
    partial = state.extra.pop("partial", None) if skip else None
    dev = state.extra["device"]
    # running sums: loss x samples and correct predictions stay on the device (no per-batch sync)
    stats = torch.tensor(partial["sums"][:2] if partial else [0.0, 0.0], dtype=torch.float64, device=dev)
    positions, samples = (int(partial["sums"][2]), int(partial["sums"][3])) if partial else (0, 0)
    seconds = partial["seconds"] if partial else 0.0
    t0 = time.perf_counter()
    net.train()
    for batch_idx, (inputs, targets) in enumerate(data):
        if batch_idx < skip:
            if batch_idx == skip - 1:
                ckpt.set_rng_states(start.tensors, start.index["rng"])
            continue
        if skip and state.stop:  # resumed at the step where a callback ended the training
            break
        state.batch_idx, state.inputs, state.targets = batch_idx, _to(inputs, dev), _to(targets, dev)
        call(callbacks, "on_batch_start", state)
        task_loss = _step(net, state, loss_fn, teacher, callbacks)
        k = _count(state.targets)
        stats[0] += task_loss.detach() * k
        stats[1] += _correct(state.outputs, state.targets)
        positions, samples = positions + _positions(k, state.targets), samples + k
        bar.advance(task_loss)
        if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
            partial_now = {"sums": [*stats.tolist(), positions, samples], "seconds": seconds + time.perf_counter() - t0}
            _save(state, info, _Position(state.epoch, batch_idx + 1), partial_now, epoch_rng, callbacks)
        if state.stop:
            break
    state.inputs = state.targets = state.outputs = None
    loss_sum, correct, positions, samples = ddp.all_sum([*stats.tolist(), positions, samples], info)
    return {"epoch": state.epoch, "train_loss": loss_sum / samples if samples else float("nan"),
            "train_acc": correct / positions if positions else float("nan"), "lr": opt.param_groups[0]["lr"],
            "seconds": seconds + time.perf_counter() - t0}


def _step(net, state: TrainState, loss_fn, teacher, callbacks) -> torch.Tensor:
    """One optimizer step on state.inputs/targets; returns the task loss (before callbacks' terms)."""
    cfg, opt, scaler = state.config, state.optimizer, state.extra["scaler"]
    amp = scaler.is_enabled()
    with torch.autocast(state.extra["device"].type) if amp else contextlib.nullcontext():
        state.outputs = output_logits(net(state.inputs))
        loss = loss_fn(state.outputs, state.targets)
        if teacher is not None:
            loss = _distill(loss, state.outputs, teacher, state.inputs, cfg)
    state.loss = loss
    call(callbacks, "on_before_backward", state)
    opt.zero_grad(set_to_none=True)
    if amp:
        scaler.scale(state.loss).backward()
        scaler.unscale_(opt)  # callbacks and clipping see true gradients
    else:
        state.loss.backward()
    call(callbacks, "on_after_backward", state)
    if cfg.grad_clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip_norm)
    if amp:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    state.scheduler.step()
    state.step += 1
    call(callbacks, "on_after_step", state)
    return loss


def _distill(loss, student_logits, teacher, inputs, cfg) -> torch.Tensor:
    with torch.no_grad():
        t_logits = output_logits(teacher(inputs))
    T = cfg.kd_temperature
    kl = F.kl_div(F.log_softmax(student_logits.float() / T, -1).flatten(0, -2),
                  F.log_softmax(t_logits.float() / T, -1).flatten(0, -2), reduction="batchmean", log_target=True)
    return (1 - cfg.kd_alpha) * loss + cfg.kd_alpha * T * T * kl


def _save(state: TrainState, info: ddp.DistInfo, pos: _Position, partial, epoch_rng=None, callbacks=()) -> None:
    cfg = state.config
    if cfg.checkpoint_dir is None or not info.is_main:
        return
    try:
        states, tensors = capture_callbacks(callbacks, state.model, (state.optimizer, state.scheduler))
    except Unrestorable as e:  # the checkpoint is written without it; a resume then starts the call again
        states, tensors = None, {}
        if not state.extra.get("unrestorable"):
            state.extra["unrestorable"] = True
            log.warning("checkpoint without the callbacks' state (%s cannot be saved): a resume trains from step 0", e)
    meta = {"step": state.step, "epoch": pos.epoch, "skip": pos.skip, "history": state.history,
            "partial": partial, "config": cfg.to_dict(), "callbacks": states, "stop": state.stop}
    ckpt.save_checkpoint(cfg.checkpoint_dir, state.model, state.optimizer, state.scheduler, meta=meta,
                         epoch_start_rng=epoch_rng, extra_tensors=tensors)


def _default_loss(label_smoothing: float) -> LossFn:
    def cross_entropy(out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if out.dim() > 2:  # sequence outputs [N, T, C] with targets [N, T]
            out, targets = out.flatten(0, -2), targets.flatten()
        return F.cross_entropy(out.float(), targets, label_smoothing=label_smoothing)

    return cross_entropy


def output_logits(out):
    """The tensor a training step's loss and accuracy read: ``.logits`` of a model output, the first item of a
    tuple, or the output itself."""
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def _to(x, device):
    if torch.is_tensor(x):
        return x.to(device, non_blocking=True)
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x


def _count(targets) -> int:
    return int(targets.shape[0]) if torch.is_tensor(targets) and targets.dim() > 0 else 1


def _positions(n: int, targets) -> int:
    """Number of predictions among ``n`` samples (tokens for sequence targets)."""
    per = int(targets[0].numel()) if torch.is_tensor(targets) and targets.dim() > 1 else 1
    return n * per


def _correct(out, targets) -> torch.Tensor:
    if torch.is_tensor(out) and torch.is_tensor(targets) and out.dim() == targets.dim() + 1 \
            and not targets.is_floating_point():
        return (out.argmax(-1) == targets).sum()
    return torch.zeros((), dtype=torch.long, device=out.device if torch.is_tensor(out) else "cpu")


def _fmt(record: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
