"""Soft Threshold Reparameterization (STR): per-layer learned thresholds.

Paper: "Soft Threshold Weight Reparameterization for Learnable Sparsity", Aditya Kusupati, Vivek
Ramanujan, Raghav Somani, Mitchell Wortsman, Prateek Jain, Sham Kakade, Ali Farhadi. ICML 2020.
https://arxiv.org/abs/2002.03231

Each layer keeps its dense weights W and one learnable scalar s; the forward uses the soft-thresholded
copy sign(W) * relu(|W| - sigmoid(s)), so every weight below the layer's threshold is exactly zero. The
thresholds are trained with the task loss alongside the weights. Weight decay on s pulls it up from a very
negative start (threshold near zero, a dense network), the task loss pushes back wherever a higher
threshold costs accuracy, and so each layer settles on its own sparsity: the per-layer budget is learned,
not set. The paper steers the overall sparsity only through the initial s and the decay strength, and that
is what runs by default. Two additions of ours are options: ``steer`` pushes every s towards the sparsity of
a cubic ramp to the target (off by default), and ``top_up`` prunes the smallest survivors globally when the
learned sparsity falls short of the target (reported apart from the learned sparsity).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError
from ..masks import get_pattern, install_masks_, prunable_weights, select_masks
from ..train.config import method_train_config
from ..schedules import agp_cubic
from ..train.callbacks import Callback, TrainState
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method
from ..train import fit

log = logging.getLogger(__name__)

__all__ = ["SoftThreshold", "attach_str_", "detach_str_", "str_thresholds", "str_sparsity", "STRCallback",
           "STRConfig", "run"]


class SoftThreshold(nn.Module):
    """Parametrization ``W -> sign(W) * relu(|W| - sigmoid(s))`` with a learnable scalar ``s``."""

    def __init__(self, s_init: float = -10.0):
        super().__init__()
        self.s = nn.Parameter(torch.tensor(float(s_init)))

    def threshold(self) -> torch.Tensor:
        return torch.sigmoid(self.s)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.sign(weight) * torch.relu(weight.abs() - torch.sigmoid(self.s).to(weight.dtype))


def attach_str_(model: nn.Module, *, s_init: float = -5.0, ignore=(), exempt=()) -> list[str]:
    """Reparameterize every prunable weight with :class:`SoftThreshold`; returns the weights' FQNs.

    Call it before building the optimizer (the thresholds are new parameters and the dense weights move to
    ``parametrizations.weight.original``); :func:`detach_str_` restores the plain parameter names.
    """
    fqns = list(prunable_weights(model, ignore, exempt))
    for fqn in fqns:
        module = model.get_submodule(fqn.rpartition(".")[0])
        order = list(module._parameters)  # restored by detach_str_, so state_dict keys keep their order
        parametrize.register_parametrization(module, "weight", SoftThreshold(s_init))
        module.parametrizations.weight[0].param_order = order
    return fqns


def _str_modules(model: nn.Module) -> dict[str, nn.Module]:
    out = {}
    for name, m in model.named_modules():
        if parametrize.is_parametrized(m, "weight") and isinstance(m.parametrizations.weight[0], SoftThreshold):
            out[f"{name}.weight" if name else "weight"] = m
    return out


def str_thresholds(model: nn.Module) -> dict[str, float]:
    """``{weight_fqn: sigmoid(s)}`` of the attached soft thresholds."""
    return {k: float(m.parametrizations.weight[0].threshold().detach()) for k, m in _str_modules(model).items()}


@torch.no_grad()
def str_sparsity(model: nn.Module) -> tuple[float, dict[str, float]]:
    """Overall and per-layer fraction of exact zeros in the soft-thresholded weights."""
    per, zeros, numel = {}, 0, 0
    for k, m in _str_modules(model).items():
        w = m.weight  # the thresholded view
        z = int((w == 0).sum())
        per[k] = z / w.numel()
        zeros, numel = zeros + z, numel + w.numel()
    return (zeros / numel if numel else 0.0), per


def detach_str_(model: nn.Module) -> dict[str, torch.Tensor]:
    """Bake the soft-thresholded weights into plain parameters (names restored); returns their non-zero masks."""
    masks = {}
    for k, m in _str_modules(model).items():
        order = getattr(m.parametrizations.weight[0], "param_order", [])
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
        for name in [n for n in order if n in m._parameters]:
            m._parameters[name] = m._parameters.pop(name)
        masks[k] = m.weight.detach() != 0
    return masks


class STRCallback(Callback):
    """Plain STR's decay on the thresholds, plus steering of the sparsity towards ``target`` (ours).

    Each step every threshold parameter ``s`` receives the extra gradient ``lam * s`` (the paper's weight
    decay on ``s``, which raises the threshold from a negative start). With a ``target``, it also receives
    ``-gain * (scheduled - current)``: the sparsity error against the cubic ramp (:func:`agp_cubic`, one grid
    point per step) to ``target`` that ends at ``ramp_steps`` raises every threshold while the network is too dense and lowers it while too sparse.
    The same push goes to every layer; how far each layer's sparsity moves is left to its own weights and
    loss gradient, so the allocation stays learned. ``history`` holds ``(step, sparsity)`` every
    ``log_every`` steps.
    """

    def __init__(self, target: float | None = None, *, ramp_steps: int = 1, lam: float = 5e-4,
                 gain: float = 20.0, log_every: int = 50):
        if target is not None and (isinstance(target, bool) or not 0 <= target < 1):
            raise ConfigError(f"target={target!r} must be None or a sparsity in [0, 1), e.g. 0.9")
        if not isinstance(ramp_steps, int) or ramp_steps < 1:
            raise ConfigError(f"ramp_steps={ramp_steps!r} must be a positive int (optimizer steps of the ramp)")
        if lam < 0 or gain < 0:
            raise ConfigError(f"lam={lam!r} and gain={gain!r} must be >= 0, e.g. lam=5e-4, gain=1.0")
        self.target, self.ramp_steps, self.lam, self.gain, self.log_every = target, ramp_steps, lam, gain, log_every
        self.history: list[tuple[int, float]] = []

    def scheduled(self, step: int) -> float:
        return agp_cubic(step, final=self.target, start=0, n=self.ramp_steps, frequency=1)

    def on_after_backward(self, state: TrainState) -> None:
        push = 0.0
        if self.target is not None:
            current, _ = str_sparsity(state.model)
            push = self.gain * (self.scheduled(state.step) - current)
            if state.step % self.log_every == 0:
                self.history.append((state.step, current))
        for m in _str_modules(state.model).values():
            s = m.parametrizations.weight[0].s
            if s.grad is not None:
                s.grad.add_(self.lam * s.detach() - push)


@dataclass(frozen=True)
class STRConfig(MethodConfig):
    s_init: float = -5.0  # initial s (threshold sigmoid(-5) = 0.0067); the paper tunes it with the decay per target (appendix; ImageNet 90%: -3200 over 100 epochs)
    lam: float = option(0.0, ge=0)  # ours: decay on s added to the training config's (paper: one weight decay for W and s)
    steer: bool = False  # ours: steer the sparsity along a cubic ramp to the target (paper: none, emergent)
    ramp_fraction: float = option(0.6, gt=0, le=1)  # ours, with steer: share of the steps the ramp takes
    gain: float = option(20.0, ge=0)  # ours, with steer: gradient on s per unit of sparsity error
    top_up: bool = True  # ours: prune the smallest survivors globally when the learned sparsity is short (reported apart)
    exempt: tuple[str, ...] = ()  # ours: ("first",) / ("last",) keep those layers dense


@register_method("str", config=STRConfig, kind="unstructured", needs=("train",), status="partial", left_out=(
    "the structured variant (soft thresholds on the singular values of low-rank layers) is not implemented"),
    telemetry=Telemetry(keys=("thresholds", "threshold_rise", "learned_sparsity", "learned_per_layer", "topped_up",
                              "steered"),
                        engaged=lambda t: t["learned_sparsity"] > 0 and t["threshold_rise"] > 0,
                        what="learned thresholds rose during training and zeroed weights",
                        knob="raise options.s_init, options.lam or the training weight decay (they pull the "
                             "threshold up), or prune_epochs"))
def run(ctx: RunContext, cfg: STRConfig) -> MethodResult:
    """Train ``ctx.prune_epochs`` with soft-threshold layers, bake the thresholds in, mask the zeros.

    With ``top_up`` a learned sparsity below the target is completed by pruning the smallest surviving
    weights globally (never the other way: a learned zero is not revived, so the result may exceed it).
    """
    sparsity = ctx.target_value
    train = method_train_config(ctx, max(1, ctx.prune_epochs))
    total = train.epochs * len(ctx.train_data)
    cb = STRCallback(sparsity if cfg.steer else None, ramp_steps=max(1, int(cfg.ramp_fraction * total)),
                     lam=cfg.lam, gain=cfg.gain)
    fqns = attach_str_(ctx.model, s_init=cfg.s_init, ignore=ctx.ignore, exempt=cfg.exempt)
    start = str_thresholds(ctx.model)
    try:
        fit(ctx.model, ctx.train_data, train, callbacks=[cb])
        thresholds = str_thresholds(ctx.model)
    finally:
        masks = detach_str_(ctx.model)
    numel = sum(m.numel() for m in masks.values())
    learned = 1 - sum(int(m.sum()) for m in masks.values()) / numel
    per_layer = {k: 1 - float(m.float().mean()) for k, m in masks.items()}
    if cfg.top_up and learned < sparsity:
        scores = {k: ctx.model.get_parameter(k).detach().abs() for k in fqns}
        masks = select_masks(scores, get_pattern("element"), global_sparsity=sparsity)
    install_masks_(ctx.model, masks, mode="hard")
    final = 1 - sum(int(m.sum()) for m in masks.values()) / numel
    telemetry = {"thresholds": thresholds, "threshold_rise": max(thresholds[k] - start[k] for k in thresholds),
                 "learned_sparsity": learned, "learned_per_layer": per_layer, "topped_up": final - learned,
                 "steered": cfg.steer}
    return MethodResult(ctx.model, info={"learned_sparsity": learned, "sparsity": final,
                                         "learned_per_layer": per_layer, "thresholds": thresholds},
                        telemetry=telemetry)
