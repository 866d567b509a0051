"""Frozen-weight score training: the weights stay exactly as drawn, only scores or gates learn.

Two kinds of scores share one mechanism. The wrapped model's parameters are frozen (``requires_grad=False``)
and its forward runs through :func:`torch.func.functional_call` with some parameters *substituted* by a
function of the scores, so the model's modules, parameter names and ``state_dict`` never change and its
tensors are never written:

* :class:`Supermask` (edge-popup, Ramanujan et al., "What's Hidden in a Randomly Weighted Neural Network?",
  CVPR 2020, Alg. 1): one real score per weight; the forward uses ``W * m`` with ``m`` the top-k of
  ``|scores|`` of each layer (k = the kept fraction), and the backward passes the gradient of ``m`` straight
  through to the scores, so ``dL/ds_uv = dL/d(W m)_uv * W_uv`` (the paper's update rule).
* :class:`FrozenChannelGates` (Pruning from Scratch, Wang et al., AAAI 2020, sec. 3): one gate per output
  channel, multiplying that channel's producing affine parameters (a BatchNorm's ``gamma`` and ``beta``, or a
  conv/linear's rows and bias without a BN): scaling both by ``g`` is exactly ``g`` times the channel's output.

Both are ``nn.Module`` wrappers whose only trainable parameters are the scores, so ``fit(wrapper, data, cfg)``
trains them with the config's optimizer. :class:`FrozenWeights` (a context manager) freezes a model and
checks on exit that every parameter is bit-identical (byte comparison of :func:`weight_fingerprint`).

Example:
    >>> torch.manual_seed(0) and None
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> sm = Supermask(net, {"0.weight": 0.5, "2.weight": 0.5})
    >>> [int(m.sum()) for m in sm.masks().values()], [n for n, p in sm.named_parameters() if p.requires_grad]
    ([16, 8], ['scores.0__weight', 'scores.2__weight'])
"""
from __future__ import annotations

import hashlib
import math
from typing import Iterable, Mapping

import torch
from torch import nn
from torch.func import functional_call

from ..errors import PruneError
from .callbacks import Callback

__all__ = ["weight_fingerprint", "changed_weights", "FrozenWeights", "WeightsChanged", "topk_mask", "kept_count",
           "Supermask", "FrozenChannelGates", "GateMeanPenalty", "ClampGates"]


class WeightsChanged(PruneError):
    """A frozen parameter was written while only scores were meant to train."""


def weight_fingerprint(model: nn.Module) -> dict[str, str]:
    """``{param_fqn: sha256 of its bytes}``: equal fingerprints mean bit-identical parameters."""
    out = {}
    for fqn, p in model.named_parameters():
        t = p.detach().cpu().contiguous().reshape(-1)
        digest = hashlib.sha256(t.view(torch.uint8).numpy().tobytes()).hexdigest()
        out[fqn] = f"{digest}:{tuple(p.shape)}:{p.dtype}"
    return out


def changed_weights(model: nn.Module, fingerprint: Mapping[str, str]) -> list[str]:
    """The parameters of ``model`` whose bytes (or shape, dtype, existence) differ from ``fingerprint``."""
    now = weight_fingerprint(model)
    return sorted(k for k in set(now) | set(fingerprint) if now.get(k) != fingerprint.get(k))


class FrozenWeights:
    """Freeze every parameter of ``model`` inside the block; on exit restore ``requires_grad`` and check that
    each parameter is bit-identical, raising :class:`WeightsChanged` (with the FQNs) when one is not.

    Example:
        >>> m = nn.Linear(2, 2)
        >>> with FrozenWeights(m) as fw:
        ...     m.weight.requires_grad
        False
        >>> fw.changed, m.weight.requires_grad
        ([], True)
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.changed: list[str] = []

    def __enter__(self) -> "FrozenWeights":
        self._grad = {n: p.requires_grad for n, p in self.model.named_parameters()}
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.fingerprint = weight_fingerprint(self.model)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for n, p in self.model.named_parameters():
            p.requires_grad_(self._grad.get(n, True))
        self.changed = changed_weights(self.model, self.fingerprint)
        if self.changed and exc_type is None:
            raise WeightsChanged(f"frozen weights changed during score training: {self.changed[:5]}; only scores "
                                 f"may be trained (do not pass the model's parameters to an optimizer)")


def kept_count(numel: int, sparsity: float) -> int:
    """Entries a top-k mask keeps: ``numel - floor(sparsity * numel)`` (edge-popup's rounding)."""
    return numel - int(sparsity * numel)


class _TopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor, k: int) -> torch.Tensor:
        mask = torch.zeros_like(scores)
        idx = torch.topk(scores.flatten(), k, sorted=False).indices
        mask.view(-1)[idx] = 1.0
        return mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None  # straight through: the mask's gradient goes to the scores unchanged


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A 0/1 tensor with ones at the ``k`` largest ``scores``; its gradient passes straight through to ``scores``.

    Example:
        >>> s = torch.tensor([0.3, -2.0, 1.0, 0.1], requires_grad=True)
        >>> m = topk_mask(s, 2); m.tolist()
        [1.0, 0.0, 1.0, 0.0]
        >>> (m * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward(); s.grad.tolist()
        [1.0, 2.0, 3.0, 4.0]
    """
    return _TopK.apply(scores, int(k))


def _key(fqn: str) -> str:
    return fqn.replace(".", "__")  # ParameterDict keys cannot hold dots


class _Substituted(nn.Module):
    """A frozen ``net`` whose forward sees some parameters replaced by functions of this module's scores
    (``requires_grad`` is switched off here; :class:`FrozenWeights` restores it)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        for p in net.parameters():
            p.requires_grad_(False)

    def substitutes(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, *args, **kwargs):
        return functional_call(self.net, self.substitutes(), args, kwargs, strict=False)


class Supermask(_Substituted):
    """Edge-popup score training on a frozen ``net``: ``{param_fqn: sparsity}`` names the masked weights.

    Scores start from Kaiming-uniform draws (``a = sqrt(5)``, the authors' choice) under ``generator``; the
    forward uses ``W * topk(|s|)`` per tensor. ``masks()`` gives the current boolean masks.
    """

    def __init__(self, net: nn.Module, sparsity: Mapping[str, float], generator: torch.Generator | None = None):
        super().__init__(net)
        params = dict(net.named_parameters())
        bad = [f for f in sparsity if f not in params]
        if bad:
            raise ValueError(f"Supermask: {bad[:3]} are not parameters of the model")
        self.sparsity = {f: float(s) for f, s in sparsity.items()}
        self.fqns = list(self.sparsity)
        self.scores = nn.ParameterDict()
        for f in self.fqns:
            w = params[f]
            s = torch.empty(w.shape, dtype=torch.float32)
            bound = 1.0 / math.sqrt(max(w[0].numel(), 1))  # kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(fan_in), ..)
            s.uniform_(-bound, bound, generator=generator)
            self.scores[_key(f)] = nn.Parameter(s.to(w.device))

    def k(self, fqn: str) -> int:
        return kept_count(self.scores[_key(fqn)].numel(), self.sparsity[fqn])

    def substitutes(self) -> dict[str, torch.Tensor]:
        params = dict(self.net.named_parameters())
        out = {}
        for f in self.fqns:
            m = topk_mask(self.scores[_key(f)].abs(), self.k(f))
            out[f] = params[f] * m.to(params[f].dtype)
        return out

    @torch.no_grad()
    def masks(self) -> dict[str, torch.Tensor]:
        return {f: topk_mask(self.scores[_key(f)].abs(), self.k(f)).bool() for f in self.fqns}


class FrozenChannelGates(_Substituted):
    """Per-channel gates on a frozen ``net``: ``{gate name: [param fqns scaled along dim 0]}``.

    A gate multiplies every listed parameter along its first dimension (a BatchNorm's ``weight`` and ``bias``,
    or a conv/linear's ``weight`` and ``bias`` where no BN follows), which gates that channel's output. Each
    parameter belongs to at most one gate. Use it inside :class:`FrozenWeights`, which restores ``requires_grad``.
    """

    def __init__(self, net: nn.Module, targets: Mapping[str, Iterable[str]], init: float = 1.0):
        super().__init__(net)
        params = dict(net.named_parameters())
        self.targets = {name: [f for f in fqns] for name, fqns in targets.items()}
        seen: dict[str, str] = {}
        for name, fqns in self.targets.items():
            for f in fqns:
                if f not in params:
                    raise ValueError(f"FrozenChannelGates: {f!r} is not a parameter of the model")
                if f in seen:
                    raise ValueError(f"FrozenChannelGates: {f!r} is gated by both {seen[f]!r} and {name!r}")
                seen[f] = name
        widths = {name: {params[f].shape[0] for f in fqns} for name, fqns in self.targets.items()}
        bad = {n: w for n, w in widths.items() if len(w) != 1}
        if bad:
            raise ValueError(f"FrozenChannelGates: the parameters of a gate disagree on the width: {bad}")
        self.gates = nn.ParameterDict({_key(n): nn.Parameter(torch.full((w.pop(),), float(init),
                                                                        device=params[self.targets[n][0]].device))
                                       for n, w in widths.items()})

    def gate(self, name: str) -> nn.Parameter:
        return self.gates[_key(name)]

    def all_gates(self) -> torch.Tensor:
        return torch.cat([g.view(-1) for g in self.gates.values()])

    def substitutes(self) -> dict[str, torch.Tensor]:
        params = dict(self.net.named_parameters())
        out = {}
        for name, fqns in self.targets.items():
            g = self.gate(name)
            for f in fqns:
                p = params[f]
                out[f] = p * g.to(p.dtype).view([-1] + [1] * (p.dim() - 1))
        return out

    @torch.no_grad()
    def clamp_(self, lo: float = 0.0, hi: float = 1.0) -> None:
        for g in self.gates.values():
            g.clamp_(lo, hi)


class GateMeanPenalty(Callback):
    """Adds ``lam * (mean |g| - r)^2`` over every gate of ``gates`` to the loss (PFS's sparsity term, sec. 3)."""

    def __init__(self, gates: FrozenChannelGates, lam: float, r: float):
        self.gates, self.lam, self.r = gates, float(lam), float(r)

    def on_before_backward(self, state) -> None:
        state.loss = state.loss + self.lam * (self.gates.all_gates().abs().mean() - self.r) ** 2


class ClampGates(Callback):
    """Clips the gates to ``[lo, hi]`` after every optimizer step (PFS keeps them in [0, 1])."""

    def __init__(self, gates: FrozenChannelGates, lo: float = 0.0, hi: float = 1.0):
        self.gates, self.lo, self.hi = gates, lo, hi

    def on_after_step(self, state) -> None:
        self.gates.clamp_(self.lo, self.hi)
