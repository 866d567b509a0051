"""Sparse back-propagation: small activation gradients pruned stochastically, without bias, during training.

Ye et al. (ECCV 2020, "Accelerating CNN Training by Pruning Activation Gradients") observe that most entries of
the gradient with respect to a conv layer's output are close to zero. Each of those tensors is sparsified before
it is used for the weight gradient and for the gradient passed further back: with a threshold ``tau``, an entry
``|g| >= tau`` is kept, an entry ``|g| < tau`` becomes ``sign(g) * tau`` with probability ``|g| / tau`` and 0
otherwise, so ``E[g'] = g`` entry by entry (the unbiased rule the paper's convergence argument needs). ``tau`` is
set per tensor and step from a zero-mean normal fitted to the tensor, so that a fraction ``p`` of the entries falls
below it: ``tau = sigma * sqrt(2) * erfinv(p)``. Here ``sigma`` is estimated from the mean absolute value of the
non-zero entries (``E|g| = sigma * sqrt(2 / pi)`` for a normal), and when the tensor already holds exact zeros
(a conv followed directly by a ReLU) ``p`` is the fraction of all entries, so the rule only needs to prune
``(p * n - zeros) / (n - zeros)`` of the non-zero ones.

:func:`prune_activation_gradient` is the rule on one tensor; :class:`ActivationGradientPruning` applies it to the
output gradient of every chosen layer through tensor hooks registered in the forward (active only while the
model is training with autograd on) and counts the entries it set to zero.

Example:
    >>> g = torch.tensor([2.0, -0.25, 0.125, -3.0, 0.25])  # tau = 0.5: the three small entries go to 0 or +-0.5
    >>> prune_activation_gradient(g, tau=0.5, generator=torch.Generator().manual_seed(0)).tolist()
    [2.0, 0.0, 0.5, -3.0, 0.5]
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from ..errors import ConfigError
from .callbacks import Callback

__all__ = ["gradient_threshold", "prune_activation_gradient", "ActivationGradientPruning"]


def gradient_threshold(g: torch.Tensor, p: float) -> float:
    """``tau`` under which a fraction ``p`` of ``g``'s entries falls, from a zero-mean normal fit (module docstring)."""
    n = g.numel()
    nonzero = g[g != 0].abs()
    if nonzero.numel() == 0:
        return 0.0
    p_nonzero = (p * n - (n - nonzero.numel())) / nonzero.numel()  # the exact zeros already count as pruned
    if p_nonzero <= 0:
        return 0.0
    sigma = math.sqrt(math.pi / 2) * float(nonzero.double().mean())
    return sigma * math.sqrt(2) * float(torch.erfinv(torch.tensor(min(p_nonzero, 1 - 1e-7), dtype=torch.float64)))


def prune_activation_gradient(g: torch.Tensor, p: float | None = None, *, tau: float | None = None,
                              generator: torch.Generator | None = None) -> torch.Tensor:
    """The unbiased stochastic pruning of ``g``: ``|g| >= tau`` kept, else ``sign(g) * tau`` with probability
    ``|g| / tau``, 0 otherwise. ``tau`` defaults to :func:`gradient_threshold` ``(g, p)``."""
    if tau is None:
        if p is None:
            raise ConfigError("prune_activation_gradient: give p (fraction below the threshold) or tau")
        tau = gradient_threshold(g, p)
    if tau <= 0:
        return g
    a = g.abs()
    u = torch.rand(g.shape, generator=generator, device=g.device, dtype=g.dtype)
    up = u * tau < a  # probability |g| / tau
    return torch.where(a >= tau, g, torch.where(up, torch.sign(g) * tau, torch.zeros_like(g)))


class ActivationGradientPruning(Callback):
    """Prunes the gradient w.r.t. the output of each layer in ``layers`` (default: every ``nn.Conv2d`` of
    ``model``) with :func:`prune_activation_gradient` at rate ``p``; a training callback for :func:`prunekit.train.fit`
    or any loop (hooks are installed on creation; :meth:`remove`, or the end of training, takes them off).

    ``stats()`` gives, per layer, the fraction of output-gradient entries that were exactly zero after pruning and
    the fraction the rule itself set to zero (entries that were not zero before), over all steps.
    """

    def __init__(self, model: nn.Module, p: float = 0.9, layers: Iterable[str] | None = None, seed: int = 0):
        if not 0 <= p < 1:
            raise ConfigError(f"p={p!r}: the fraction of activation-gradient entries below the threshold must be in "
                              f"[0, 1), e.g. 0.9")
        mods = dict(model.named_modules())
        names = [f for f, m in mods.items() if isinstance(m, nn.Conv2d)] if layers is None else list(layers)
        bad = [f for f in names if f not in mods]
        if bad or not names:
            raise ConfigError(f"layers={names!r}: give module FQNs of the model (e.g. its convs); "
                              + (f"{bad[0]!r} is not one" if bad else "the model has no Conv2d"))
        self.p = float(p)
        self.seed = int(seed)
        self._generators: dict[torch.device, torch.Generator] = {}
        self.counts = {f: [0, 0, 0] for f in names}  # [entries, zero after, zeroed by the rule]
        self._handles = [mods[f].register_forward_hook(self._forward_hook(f)) for f in names]

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def _forward_hook(self, name: str):
        def hook(module, _inputs, out):
            if module.training and torch.is_grad_enabled() and isinstance(out, torch.Tensor) and out.requires_grad:
                out.register_hook(lambda g: self._prune(name, g))

        return hook

    def _prune(self, name: str, g: torch.Tensor) -> torch.Tensor:
        out = prune_activation_gradient(g, self.p, generator=self._generator(g.device))
        c = self.counts[name]
        zero_after = out == 0
        c[0] += g.numel()
        c[1] += int(zero_after.sum())
        c[2] += int((zero_after & (g != 0)).sum())
        return out

    def stats(self) -> dict:
        """``{layer: {"zero_fraction", "pruned_fraction"}}`` over every gradient seen so far."""
        return {f: {"zero_fraction": c[1] / c[0] if c[0] else 0.0, "pruned_fraction": c[2] / c[0] if c[0] else 0.0}
                for f, c in self.counts.items()}

    def state_dict(self) -> dict:
        """Counts and random-generator states, so a resumed training draws what the uninterrupted one would."""
        return {"counts": {f: list(c) for f, c in self.counts.items()},
                "rng": {str(d): g.get_state() for d, g in self._generators.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.counts = {f: list(c) for f, c in state["counts"].items()}
        for d, rng in state["rng"].items():
            self._generator(torch.device(d)).set_state(rng)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def on_train_end(self, state) -> None:
        self.remove()
