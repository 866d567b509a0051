"""Mask workflows shared by the weight-pruning methods: iterative prune → retrain, lottery tickets
(train → prune → rewind), learning-rate rewinding, random re-initialisation under a mask, tickets on disk.

Each function takes a model, data (an iterable of ``(inputs, targets)`` batches) and a
:class:`prunekit.train.TrainConfig`, trains with :func:`prunekit.train.fit`, and leaves the masks installed.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from . import _engine
from .sparsify import sparsify_

log = logging.getLogger(__name__)

__all__ = ["target_sparsity", "method_options", "train_config", "iterative_prune", "Ticket", "find_ticket",
           "reinit_", "retrain_lr_rewinding", "save_ticket", "load_ticket"]


def target_sparsity(target: str, method: str) -> float:
    """The S of ``target="sparsity=S"``; any other target kind is a ConfigError naming the method."""
    from ..recipe import parse_target

    kind, value = parse_target(target)
    if kind != "sparsity":
        raise ConfigError(f"target={target!r}: {method} is an unstructured method and takes target='sparsity=S' "
                          f"(the fraction of weights removed), e.g. 'sparsity=0.9'")
    return value


def method_options(method: str, options: dict | None) -> dict:
    from ..methods import get_method

    return get_method(method).options(options)


def train_config(ctx, epochs: int, **changes):
    """``ctx.train_config`` (or the default) with ``epochs`` and the context's seed and device."""
    from ..train import TrainConfig

    cfg = ctx.train_config if ctx.train_config is not None else TrainConfig(progress=False)
    return cfg.replace(epochs=int(epochs), seed=ctx.seed, device=ctx.device, **changes)


def _require_data(data, method: str) -> None:
    if data is None:
        raise ConfigError(f"{method} trains the model and needs train_data (an iterable of (inputs, targets) "
                          f"batches); pass train_data=")


def iterative_prune(model: nn.Module, data, cfg, *, sparsity: float, rounds: int, retrain_last: bool = False,
                    scores_fn=None, callbacks=(), **sparsify_kwargs) -> list[dict]:
    """Han et al.'s loop: ``rounds`` × (prune to the round's sparsity, retrain ``cfg.epochs`` with masks).

    Round ``r`` keeps ``(1 - sparsity) ** ((r + 1) / rounds)`` of the weights, so the last round lands on
    ``sparsity`` exactly. The last round is retrained only with ``retrain_last``. ``scores_fn(model)`` may
    supply precomputed scores per round (e.g. magnitude divided by the layer's standard deviation).
    """
    from ..train import fit

    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ConfigError(f"rounds={rounds!r} must be a positive int (prune/retrain rounds), e.g. 3")
    history = []
    keep = 1.0 - sparsity
    for r in range(rounds):
        s = 1.0 - keep ** ((r + 1) / rounds)
        kwargs = dict(sparsify_kwargs)
        if scores_fn is not None:
            kwargs["scores"] = scores_fn(model)
        report = sparsify_(model, sparsity=s, **kwargs)
        entry = {"round": r, "sparsity": report.sparsity}
        if data is not None and cfg.epochs > 0 and (r + 1 < rounds or retrain_last):
            fit(model, data, cfg, callbacks=list(callbacks))
        history.append(entry)
    return history


@dataclass
class Ticket:
    """A lottery ticket: the masks and the weights to rewind to (dense values; the masks zero the rest)."""

    masks: dict = field(default_factory=dict)  # param fqn -> bool mask
    weights: dict = field(default_factory=dict)  # state_dict at the rewind point
    rewind_step: int = 0
    history: list = field(default_factory=list)

    def apply_(self, model: nn.Module, *, skip=()) -> nn.Module:
        """Load the rewind weights and install the masks (``skip``: FQN prefixes left as they are)."""
        def keep(k):
            return not any(k == s or k.startswith(s + ".") for s in skip)
        weights = {k: v for k, v in self.weights.items() if keep(k)}
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected:
            raise CheckpointError(f"ticket weights {unexpected} do not exist in the model; is it the same architecture?")
        _engine.remove_masks_(model, apply=False)
        _engine.install_masks_(model, {k: v for k, v in self.masks.items() if keep(k)})
        return model


def find_ticket(model: nn.Module, data, cfg, *, sparsity: float, rounds: int, rewind_step: int = 0,
                allocation: str = "uniform", exempt=(), ignore=(), evaluate_on=None, callbacks=()) -> Ticket:
    """Iterative magnitude pruning with rewinding (Frankle & Carbin; late resetting when ``rewind_step > 0``).

    Each round trains ``cfg.epochs`` from the rewind weights under the current masks, prunes so that after
    ``rounds`` rounds ``sparsity`` is reached (each round removes the same fraction of the survivors), and
    rewinds. Returns the :class:`Ticket`; ``model`` is left holding it (rewound weights, final masks).
    """
    from ..schedules import RewindPoints, geometric_rounds
    from ..train import evaluate, fit

    _require_data(data, "find_ticket")
    if not isinstance(rewind_step, int) or isinstance(rewind_step, bool) or rewind_step < 0:
        raise ConfigError(f"rewind_step={rewind_step!r} must be an int >= 0 (optimizer step to rewind to; 0 = init)")
    try:
        steps_per_round = cfg.epochs * len(data)
    except TypeError:
        steps_per_round = None
    if steps_per_round is not None and rewind_step > steps_per_round:
        raise ConfigError(f"rewind_step={rewind_step} is never reached: one round trains {steps_per_round} steps "
                          f"({cfg.epochs} epochs x {len(data)} batches); choose rewind_step <= {steps_per_round}")
    rate = 1.0 - (1.0 - sparsity) ** (1.0 / rounds)
    schedule = geometric_rounds(rate, rounds) if rate < 1 else [sparsity] * rounds
    schedule[-1] = sparsity  # exact, despite rounding
    points = RewindPoints([rewind_step])
    history = []
    for r, s in enumerate(schedule):
        fit(model, data, cfg, callbacks=[*callbacks, points] if r == 0 else list(callbacks))
        entry = {"round": r}
        if evaluate_on is not None:
            entry["trained_accuracy"] = evaluate(model, evaluate_on)["accuracy"]
        report = sparsify_(model, sparsity=s, global_=allocation == "global", exempt=exempt, ignore=ignore)
        entry["sparsity"] = report.sparsity
        model.load_state_dict(points.weights(rewind_step))  # masked by the load hook
        history.append(entry)
        log.info("ticket round %d: %s", r, entry)
    return Ticket(masks={k: v.clone() for k, v in _engine.get_masks(model).items()},
                  weights=points.weights(rewind_step), rewind_step=rewind_step, history=history)


def reinit_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random re-initialisation under the current masks (the lottery-ticket control): every module with a
    ``reset_parameters`` gets fresh weights from a seeded generator; masks stay installed and apply."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in model.modules():
            if hasattr(m, "reset_parameters") and m is not model:
                m.reset_parameters()
    for m in model.modules():
        h = _engine._find_hook(m)
        if h is not None:
            for name, mode in h.modes.items():
                if mode == "feedback":
                    getattr(m, _engine.DORMANT_PREFIX + name).zero_()
    _engine.apply_masks_(model)
    return model


def retrain_lr_rewinding(model: nn.Module, data, original_cfg, *, retrain_epochs: int, callbacks=()):
    """Retrain for ``retrain_epochs`` replaying the last ``retrain_epochs`` of ``original_cfg``'s learning-rate
    schedule (Renda et al.'s learning-rate rewinding); weights are not rewound."""
    from ..schedules import LRReplay, lr_rewind_factor
    from ..train import fit, lr_factor

    n = len(data)
    total = original_cfg.epochs * n
    retrain = retrain_epochs * n
    factor = lambda step: lr_rewind_factor(step, lr_factor=lambda s, T: lr_factor(s, T, original_cfg),
                                           total_steps=total, retrain_steps=retrain)
    return fit(model, data, original_cfg.replace(epochs=retrain_epochs, scheduler="constant"),
               callbacks=[LRReplay(factor, original_cfg.lr), *callbacks])


def save_ticket(ticket: Ticket, path: str | os.PathLike) -> str:
    """Write a ticket (masks + rewind weights) to one safetensors file."""
    from safetensors.torch import save_file

    tensors = {f"weights/{k}": v.contiguous().cpu() for k, v in ticket.weights.items()}
    tensors.update({f"masks/{k}": v.to(torch.uint8).contiguous().cpu() for k, v in ticket.masks.items()})
    save_file(tensors, str(path), metadata={"format": "prunekit_ticket", "version": "1",
                                            "rewind_step": str(ticket.rewind_step),
                                            "history": json.dumps(ticket.history)})
    return str(path)


def load_ticket(path: str | os.PathLike) -> Ticket:
    from safetensors import safe_open

    if not os.path.exists(path):
        raise CheckpointError(f"no ticket file at path={str(path)!r}; write one with save_ticket(ticket, path)")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != "prunekit_ticket":
            raise CheckpointError(f"path={str(path)!r} is not a prunekit ticket (format={meta.get('format')!r})")
        weights = {k[len("weights/"):]: f.get_tensor(k) for k in f.keys() if k.startswith("weights/")}
        masks = {k[len("masks/"):]: f.get_tensor(k).bool() for k in f.keys() if k.startswith("masks/")}
    return Ticket(masks=masks, weights=weights, rewind_step=int(meta.get("rewind_step", 0)),
                  history=json.loads(meta.get("history", "[]")))
