"""Prune → train → rewind loops of the weight-pruning methods, written once.

* :func:`iterative_prune` — Han et al. (2015): rounds of (prune to the round's sparsity, retrain with masks).
* :func:`find_ticket` → :class:`Ticket` — lottery tickets (Frankle & Carbin 2019): train, prune, rewind the
  survivors to their initial values (or, with ``rewind_step > 0``, to an early step: late resetting) and
  repeat; per-layer or global rates per round.
* :func:`retrain_lr_rewinding` — Renda et al. (2020): retrain the final weights replaying the last ``t``
  epochs of the original learning-rate schedule.
* :func:`reinit_` (the random re-initialisation control), :func:`save_ticket` / :func:`load_ticket`.

Every loop trains with :func:`prunekit.train.fit` and leaves the masks installed; the round schedule is
:func:`prunekit.schedules.geometric_rounds`.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..masks import _engine
from ..masks.sparsify import prunable_weights, sparsify_
from ..schedules.callbacks import LRReplay, RewindPoints
from ..schedules.functions import geometric_rounds, lr_rewind_factor
from .callbacks import Callback
from .config import TrainConfig
from .loop import FitResult, evaluate, fit
from .optim import lr_factor

log = logging.getLogger(__name__)

__all__ = ["Ticket", "find_ticket", "iterative_prune", "retrain_lr_rewinding", "reinit_", "save_ticket",
           "load_ticket", "layer_rates", "std_threshold_mask", "std_quality", "lr_rewinding_factor"]


def _steps(data, cfg: TrainConfig) -> int | None:
    try:
        return cfg.epochs * len(data)
    except TypeError:
        return None


class _LRProbe(Callback):
    """Records the learning rate of every step and stops after ``limit`` steps (``None``: never)."""

    def __init__(self, limit: int | None = None):
        self.limit, self.lrs = limit, []

    def on_before_backward(self, state) -> None:
        self.lrs.append(float(state.optimizer.param_groups[0]["lr"]))

    def on_after_step(self, state) -> None:
        if self.limit is not None and len(self.lrs) >= self.limit:
            state.stop = True


# ------------------------------------------------------------------------------------------- Han et al.
def std_threshold_mask(weight: torch.Tensor, quality: float, sigma: float | None = None) -> torch.Tensor:
    """Keep mask of Han et al.'s rule: prune ``|w| < quality * σ`` (``σ``: the layer's standard deviation,
    by default of ``weight`` itself).

    Example:
        >>> w = torch.tensor([0.1, -2.0, 0.5, 3.0])
        >>> std_threshold_mask(w, 0.5).tolist()
        [False, True, False, True]
    """
    if not isinstance(quality, (int, float)) or isinstance(quality, bool) or quality < 0:
        raise ConfigError(f"quality={quality!r} must be a number >= 0 (threshold in units of the layer's std)")
    sigma = float(weight.detach().float().std()) if sigma is None else float(sigma)
    return weight.detach().abs() >= quality * sigma


def layer_sigmas(weights: dict[str, torch.Tensor]) -> dict[str, float]:
    """σ of each layer's surviving (non-zero) weights: pruned zeros are left out, as they are not weights."""
    out = {}
    for f, w in weights.items():
        w = w.detach().float()
        alive = w[w != 0]
        out[f] = max(float(alive.std() if alive.numel() > 1 else w.std()), 1e-12)
    return out


def std_quality(weights: dict[str, torch.Tensor], sparsity: float) -> tuple[float, dict[str, float]]:
    """The one quality parameter ``q`` for which the per-layer thresholds ``q · σ_layer`` prune ``sparsity`` of
    all the weights (zeros count as pruned); returns ``(q, {fqn: σ})``. Han et al. set ``q`` per layer from a
    sensitivity sweep; one shared ``q`` is the target-driven version of that rule."""
    sigmas = layer_sigmas(weights)
    scores = torch.cat([w.detach().abs().float().flatten() / sigmas[f] for f, w in weights.items()])
    n_prune = int(round(sparsity * scores.numel()))
    if n_prune <= 0:
        return 0.0, sigmas
    ranked = torch.sort(scores).values
    if n_prune >= ranked.numel():
        return float(ranked[-1]) * 2 + 1.0, sigmas
    lo, hi = float(ranked[n_prune - 1]), float(ranked[n_prune])
    return (0.5 * (lo + hi) if hi > lo else hi), sigmas


def _std_prune_(model: nn.Module, sparsity: float, *, ignore=(), exempt=()) -> tuple[float, dict]:
    weights = {f: p.detach() for f, p in prunable_weights(model, ignore, exempt).items()}
    q, sigmas = std_quality(weights, sparsity)
    old = _engine.get_masks(model)
    masks = {}
    for f, w in weights.items():
        m = std_threshold_mask(w, q, sigmas[f])
        masks[f] = m & old[f] if f in old else m
    _engine.install_masks_(model, masks)
    return q, {f: 1.0 - float(m.float().mean()) for f, m in masks.items()}


def iterative_prune(model: nn.Module, data, cfg, *, sparsity: float, rounds: int, threshold: str = "magnitude",
                    retrain_last: bool = False, scores_fn=None, callbacks=(), **sparsify_kwargs) -> list[dict]:
    """Han et al.'s loop: ``rounds`` × (prune to the round's sparsity, retrain ``cfg.epochs`` with masks).

    The sparsity of round ``r`` is ``geometric_rounds(sparsity, rounds=rounds)[r]``: each round removes the
    same fraction of the survivors and the last lands on ``sparsity``. ``threshold="std"`` prunes with Han et
    al.'s rule ``|w| < q · σ_layer`` (:func:`std_threshold_mask`, one ``q`` from :func:`std_quality`; only
    ``ignore``/``exempt`` apply); otherwise :func:`~prunekit.masks.sparsify_` with ``sparsify_kwargs`` (and the
    scores ``scores_fn(model)`` of each round, when given). The last round is retrained only with
    ``retrain_last``. Returns one entry per round: ``{"round", "sparsity", "layers": {fqn: sparsity},
    "retrain_steps"}`` (+ ``"quality"`` with the std rule).
    """
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ConfigError(f"rounds={rounds!r} must be a positive int (prune/retrain rounds), e.g. 3")
    if threshold not in ("magnitude", "std"):
        raise ConfigError(f"threshold={threshold!r}: choose 'std' (q * std per layer) or 'magnitude'")
    history = []
    for r, s in enumerate(geometric_rounds(sparsity, rounds=rounds)):
        if threshold == "std":
            q, layers = _std_prune_(model, s, ignore=sparsify_kwargs.get("ignore", ()),
                                    exempt=sparsify_kwargs.get("exempt", ()))
            numel = {f: model.get_parameter(f).numel() for f in layers}
            entry = {"round": r, "quality": q, "layers": layers,
                     "sparsity": sum(layers[f] * numel[f] for f in layers) / max(sum(numel.values()), 1)}
        else:
            kwargs = dict(sparsify_kwargs)
            if scores_fn is not None:
                kwargs["scores"] = scores_fn(model)
            report = sparsify_(model, sparsity=s, **kwargs)
            entry = {"round": r, "sparsity": report.sparsity,
                     "layers": {k: v["sparsity"] for k, v in report.layers.items()}}
        entry["retrain_steps"] = 0
        if data is not None and cfg is not None and cfg.epochs > 0 and (r + 1 < rounds or retrain_last):
            entry["retrain_steps"] = fit(model, data, cfg, callbacks=list(callbacks)).steps
        history.append(entry)
    return history


# --------------------------------------------------------------------------------------- lottery tickets
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


def layer_rates(model: nn.Module, *, rate: float, conv_rate: float | None = None, output_rate: float | None = None,
                ignore=(), exempt=()) -> dict[str, float]:
    """Frankle & Carbin's per-layer pruning rates: ``rate`` for fully connected layers, ``conv_rate`` for
    convolutions, ``output_rate`` for the last prunable layer (``None``: the layer's kind's rate)."""
    weights = prunable_weights(model, ignore, exempt)
    out = {f: (conv_rate if conv_rate is not None and p.dim() > 2 else rate) for f, p in weights.items()}
    last = list(prunable_weights(model, ignore))[-1:] if weights else []
    for f in last:
        if f in out and output_rate is not None:
            out[f] = output_rate
    return out


def find_ticket(model: nn.Module, data, cfg, *, sparsity: float, rounds: int | None = None, rate=None,
                rewind_step: int = 0, allocation: str = "uniform", exempt=(), ignore=(), evaluate_on=None,
                callbacks=()) -> Ticket:
    """Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; late resetting when ``rewind_step > 0``).

    Round schedule (:func:`~prunekit.schedules.geometric_rounds`): ``rate`` is the fraction of the surviving
    weights removed per round — one number, or ``{param_fqn: rate}`` (per-layer rates, ``allocation="uniform"``;
    see :func:`layer_rates`) — and the rounds go on until ``sparsity`` is reached, the last one shortened; or
    give ``rounds`` and the rate follows. ``allocation="global"`` ranks all layers together.

    Training: the first round trains ``cfg`` from the given weights and keeps the weights of step
    ``rewind_step``. After each prune the survivors are rewound to them, and the next round trains the rest of
    the *same* run from that point: at ``rewind_step=0`` the whole schedule again (the paper: reset to θ₀ and
    train as before), at ``rewind_step=k`` the ``T - k`` remaining steps with the learning rate the original
    schedule has at steps ``k .. T`` (late resetting continues the run from step ``k``; it does not restart the
    schedule). The model is left holding the ticket (rewound weights, final masks). History per round:
    ``sparsity``, per-layer ``layers``, ``steps`` trained, ``first_lr``, ``rewound_to``.
    """
    if data is None:
        raise ConfigError("find_ticket trains the model and needs train_data (an iterable of (inputs, targets) "
                          "batches); pass train_data=")
    if not isinstance(rewind_step, int) or isinstance(rewind_step, bool) or rewind_step < 0:
        raise ConfigError(f"rewind_step={rewind_step!r} must be an int >= 0 (optimizer step to rewind to; 0 = init)")
    if allocation not in ("uniform", "global"):
        raise ConfigError(f"allocation={allocation!r}: choose 'uniform' (per-layer rates) or 'global'")
    total = _steps(data, cfg)
    if total is not None and rewind_step > total:
        raise ConfigError(f"rewind_step={rewind_step} is never reached: one round trains {total} steps "
                          f"({cfg.epochs} epochs x {len(data)} batches); choose rewind_step <= {total}")
    if rewind_step > 0 and total is None:
        raise ConfigError(f"rewind_step={rewind_step} needs a sized train_data (len()) to continue the schedule")
    weights = prunable_weights(model, ignore, exempt)
    if isinstance(rate, dict):
        if allocation == "global":
            raise ConfigError("per-layer rates need allocation='uniform'; global pruning uses one rate")
        schedule = geometric_rounds(sparsity, rate=rate, sizes={f: weights[f].numel() for f in rate})
    elif rate is None and rounds is None:
        raise ConfigError("find_ticket needs rate= (fraction of the survivors removed per round) or rounds=")
    else:
        schedule = geometric_rounds(sparsity, rounds=rounds, rate=rate)
    points = RewindPoints([rewind_step])
    history = []
    for r, s in enumerate(schedule):
        if r == 0:
            probe = _LRProbe()
            fit(model, data, cfg, callbacks=[*callbacks, points, probe])
        elif rewind_step == 0:
            probe = _LRProbe()
            fit(model, data, cfg, callbacks=[*callbacks, probe])
        else:  # continue the original run from step k: its learning rates, its remaining steps
            k = rewind_step
            replay = LRReplay(lambda step, k=k: lr_factor(k + step, total, cfg), cfg.lr)
            probe = _LRProbe(limit=total - k)
            fit(model, data, cfg.replace(scheduler="constant", warmup_steps=0), callbacks=[replay, *callbacks, probe])
        entry = {"round": r, "steps": len(probe.lrs), "first_lr": probe.lrs[0] if probe.lrs else None}
        if evaluate_on is not None:
            entry["trained_accuracy"] = evaluate(model, evaluate_on)["accuracy"]
        if isinstance(s, dict):
            report = sparsify_(model, sparsity=max(s.values()), per_layer=s, exempt=exempt, ignore=ignore)
        else:
            report = sparsify_(model, sparsity=s, allocation=allocation, exempt=exempt, ignore=ignore)
        entry["sparsity"] = report.sparsity
        entry["layers"] = {k: v["sparsity"] for k, v in report.layers.items()}
        model.load_state_dict(points.weights(rewind_step))  # masked by the load hook
        entry["rewound_to"] = rewind_step
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


# ------------------------------------------------------------------------------------ Renda et al. 2020
def lr_rewinding_factor(original_cfg: TrainConfig, steps_per_epoch: int, retrain_epochs: int):
    """``step -> lr multiplier`` of learning-rate rewinding: retraining step ``s`` uses the original schedule's
    factor at step ``T - t + s`` (``T``, ``t`` in steps)."""
    total = original_cfg.epochs * steps_per_epoch
    retrain = retrain_epochs * steps_per_epoch
    return lambda step: lr_rewind_factor(step, lr_factor=lambda s, T: lr_factor(s, T, original_cfg),
                                         total_steps=total, retrain_steps=retrain)


def retrain_lr_rewinding(model: nn.Module, data, original_cfg, *, retrain_epochs: int, callbacks=()) -> FitResult:
    """Retrain for ``retrain_epochs`` replaying the last ``retrain_epochs`` of ``original_cfg``'s learning-rate
    schedule (Renda et al.'s learning-rate rewinding); weights are not rewound."""
    replay = LRReplay(lr_rewinding_factor(original_cfg, len(data), retrain_epochs), original_cfg.lr)
    return fit(model, data, original_cfg.replace(epochs=retrain_epochs, scheduler="constant", warmup_steps=0),
               callbacks=[replay, *callbacks])


# ------------------------------------------------------------------------------------------ on disk
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


# ------------------------------------------------------------------ transitional (methods not yet migrated)
