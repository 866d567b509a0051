"""Differentiable channel masks for training-time filter methods (SCP, BAR, LFPC; reusable by VCP/RBP).

* :class:`ChannelMaskHooks` multiplies the output of chosen modules (BatchNorms, or convs without one) by a
  per-channel mask computed at every forward by a function the method supplies; the model's modules and
  ``state_dict`` never change, and :meth:`~ChannelMaskHooks.remove` detaches everything. A mask ``m >= 0``
  applied to a BN output that a ReLU follows equals the same mask applied after the ReLU
  (``m * relu(y) = relu(m * y)``), so masking at the BN is masking the feature map.
* :func:`bn_relu_off_probability`: the probability that ReLU zeroes a channel whose BN output is read as
  Gaussian ``N(beta, gamma^2)`` (SCP's operation-aware view): ``Phi(-beta / |gamma|)``.
* :func:`relaxed_bernoulli`: a binary Concrete (Gumbel-sigmoid) sample of a 0/1 mask with a given on-probability.
* :class:`HardConcrete`: L0 gates (Louizos et al., ICLR 2018): a stretched, clipped Concrete whose samples
  are exactly 0 or 1 with positive probability; ``prob_nonzero`` is differentiable.
* :class:`MaskTraining`: the callback that draws fresh noise per batch, adds the method's penalty to the loss
  and steps the masks' own parameters (an optimizer the training loop does not know about).
* :func:`group_keep`: per-graph-group keep probabilities for :func:`prunekit.graph.expected_cost.expected_cost`.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from ..train.callbacks import Callback

__all__ = ["ChannelMaskHooks", "bn_relu_off_probability", "relaxed_bernoulli", "HardConcrete", "MaskTraining",
           "group_keep", "logistic_noise", "step_generator"]


class ChannelMaskHooks:
    """``out * mask_fn(fqn, module.training)`` on the output of each module of ``modules`` (channel dim 1).

    Example:
        >>> bn = nn.BatchNorm1d(2).eval()
        >>> h = ChannelMaskHooks({"bn": bn}, lambda fqn, training: torch.tensor([1.0, 0.0]))
        >>> bn(torch.ones(1, 2))[0, 1].item()
        0.0
        >>> h.remove(); bn(torch.ones(1, 2))[0, 1].item() != 0
        True
    """

    def __init__(self, modules: Mapping[str, nn.Module], mask_fn: Callable[[str, bool], torch.Tensor]):
        self.modules = dict(modules)
        self.mask_fn = mask_fn
        self._handles = [m.register_forward_hook(self._hook(f)) for f, m in self.modules.items()]

    def _hook(self, fqn: str):
        def hook(mod, _inp, out):
            m = self.mask_fn(fqn, mod.training).to(out)
            return out * m.view([1, -1] + [1] * (out.dim() - 2))

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def bn_relu_off_probability(gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``P(relu(y) = 0)`` for ``y ~ N(beta, gamma^2)``: ``Phi(-beta / |gamma|)`` (differentiable in both).

    Example:
        >>> round(float(bn_relu_off_probability(torch.tensor(1.0), torch.tensor(-3.0))), 5)  # Phi(3)
        0.99865
    """
    z = -beta / gamma.abs().clamp_min(eps)
    return 0.5 * torch.erfc(-z / math.sqrt(2.0))


def logistic_noise(shape, generator: torch.Generator | None = None) -> torch.Tensor:
    """``log u - log(1 - u)`` for ``u ~ U(0, 1)``: the noise of a binary Concrete sample."""
    u = torch.rand(shape, generator=generator).clamp(1e-6, 1 - 1e-6)
    return torch.log(u) - torch.log1p(-u)


def relaxed_bernoulli(p_on: torch.Tensor, tau: float, noise: torch.Tensor) -> torch.Tensor:
    """A binary Concrete sample ``sigmoid((logit(p_on) + noise) / tau)`` in (0, 1); ``noise`` from
    :func:`logistic_noise`. As ``tau -> 0`` it is 1 with probability ``p_on``, else 0."""
    p = p_on.clamp(1e-6, 1 - 1e-6)
    return torch.sigmoid((torch.log(p) - torch.log1p(-p) + noise.to(p)) / tau)


class HardConcrete:
    """L0 gates per channel (Louizos, Welling, Kingma, ICLR 2018, sec. 4): ``log_alpha`` is learned; a sample is
    ``clip(sigmoid((noise + log_alpha) / beta) * (zeta - gamma) + gamma, 0, 1)``.

    ``beta=2/3, gamma=-0.1, zeta=1.1`` are that paper's values. ``prob_nonzero`` is
    ``sigmoid(log_alpha - beta * log(-gamma / zeta))`` and ``deterministic`` the test-time gate
    ``clip(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1)``, exactly 0 for a closed gate.

    Example:
        >>> g = HardConcrete(torch.tensor([-5.0, 5.0]))
        >>> g.deterministic().tolist(), [round(p, 3) for p in g.prob_nonzero().tolist()]
        ([0.0, 1.0], [0.032, 0.999])
    """

    beta, gamma, zeta = 2.0 / 3.0, -0.1, 1.1

    def __init__(self, log_alpha: torch.Tensor):
        self.log_alpha = log_alpha.detach().clone().float().requires_grad_(True)

    def sample(self, noise: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid((noise.to(self.log_alpha) + self.log_alpha) / self.beta)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def prob_nonzero(self) -> torch.Tensor:
        return torch.sigmoid(self.log_alpha - self.beta * math.log(-self.gamma / self.zeta))

    def deterministic(self) -> torch.Tensor:
        s = torch.sigmoid(self.log_alpha.detach())
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)


class MaskTraining(Callback):
    """Runs a method's soft masks inside any training loop.

    ``resample(step)`` is called before every batch with the loop's step count (fresh mask noise: draw it from a
    generator seeded by the step, see :func:`step_generator`, so a resumed run draws the same), ``penalty(state)``
    (a scalar tensor) is
    added to the loss before backward, and ``params`` (the masks' own leaf tensors, unknown to the loop's
    optimizer) take one Adam step with ``lr`` after the loop's step. ``after_step(state)`` may record telemetry.
    """

    def __init__(self, resample: Callable[[int], None], penalty: Callable | None = None,
                 params: Iterable[torch.Tensor] = (), lr: float = 0.01, after_step: Callable | None = None):
        self.resample, self.penalty, self.after_step = resample, penalty, after_step
        self.params = list(params)
        self.opt = torch.optim.Adam(self.params, lr=lr) if self.params else None

    def on_batch_start(self, state) -> None:
        self.resample(state.step)

    def on_before_backward(self, state) -> None:
        if self.penalty is not None:
            state.loss = state.loss + self.penalty(state)

    def on_after_step(self, state) -> None:
        if self.opt is not None:
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        if self.after_step is not None:
            self.after_step(state)


def step_generator(seed: int, step: int) -> torch.Generator:
    """A generator that depends only on ``(seed, step)``: the noise of a step is the same after a resume."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))


def group_keep(groups, keep_by_key: Mapping[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """``{graph group id: keep probabilities}`` from ``{filter group key: keep probabilities}`` (FilterGroups)."""
    return {g.group.id: keep_by_key[g.key] for g in groups if g.key in keep_by_key}
