"""Variational channel gates: a Gaussian posterior on one multiplicative factor per channel, trained by the ELBO.

Two Bayesian pruning methods learn, for every channel, a distribution rather than a point value of a factor
that scales the channel, and remove the channels whose posterior says the factor is not needed:

- :class:`BNSaliencyPosterior` (VCP, Zhao et al. 2019): the factor is BatchNorm's scale. ``gamma_c`` gets a
  posterior ``N(mu_c, sigma_c^2)`` whose mean *is* ``bn.weight`` (so the user's optimizer trains it as
  before) and whose log-variance is held here. While training, the BN output ``gamma * x_hat + beta`` gets the
  reparameterised noise ``sigma * eps * x_hat`` (``eps ~ N(0, 1)`` per example and channel), i.e. it is computed
  with a sampled ``gamma``; in eval mode it uses the mean, so the plain model is the posterior mean.
- :class:`ChannelNoiseGates` (RBP, Zhou et al. 2019): a multiplicative noise ``theta_c ~ N(mu_c, sigma_c^2)`` on
  a layer's output channels, ``mu`` starting at 1 (the layer unchanged); :meth:`ChannelNoiseGates.fold_`
  multiplies the mean into the producing layer (weight and bias, or a BN's scale and shift).

Both add ``kl_weight * sum_c KL(q(z_c) || p(z_c))`` to the loss in ``on_before_backward`` (with ``kl_weight =
1/N`` this is the negative ELBO per example) and step their own Adam optimizer on the log-variances (and the
gates' means) after the model's step, so they run inside :func:`prunekit.train.fit` or any loop calling the
hooks. The KL terms and the pruning statistics are plain functions:

- :func:`kl_gaussian`: ``KL(N(mu, s^2) || N(0, s0^2)) = log(s0/s) + (s^2 + mu^2) / (2 s0^2) - 1/2``;
- :func:`kl_log_uniform`: the variational-dropout approximation of ``KL(q || log-uniform)`` (Molchanov et al.
  2017, eq. 14), a function of ``log alpha = log(s^2 / mu^2)`` alone;
- :func:`snr` ``|mu| / s`` and :func:`log_alpha`: small SNR (large ``alpha``) = the posterior cannot tell the
  factor from zero.

Noise is drawn from a generator seeded at construction, so a run is reproducible under its seed.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from .callbacks import Callback

__all__ = ["kl_gaussian", "kl_log_uniform", "snr", "log_alpha", "BNSaliencyPosterior", "ChannelNoiseGates",
           "n_examples"]

_K1, _K2, _K3 = 0.63576, 1.87320, 1.48695  # Molchanov et al. 2017, eq. 14


def kl_gaussian(mu: torch.Tensor, log_sigma2: torch.Tensor, prior_sigma: float) -> torch.Tensor:
    """Per channel ``KL(N(mu, sigma^2) || N(0, prior_sigma^2))``.

    Example:
        >>> kl_gaussian(torch.tensor([0.0, 1.0]), torch.log(torch.tensor([0.01, 0.01])), 0.1).tolist()
        [0.0, 50.0]
    """
    s2 = log_sigma2.exp()
    p2 = float(prior_sigma) ** 2
    return 0.5 * (math.log(p2) - log_sigma2) + (s2 + mu ** 2) / (2 * p2) - 0.5


def log_alpha(mu: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
    """``log(sigma^2 / mu^2)``, the variational-dropout rate of each channel's factor."""
    return log_sigma2 - torch.log(mu ** 2 + 1e-16)


def kl_log_uniform(mu: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
    """Per channel ``KL(N(mu, sigma^2) || p)`` with ``p(|z|) ~ 1/|z|`` (log-uniform), Molchanov et al. 2017 eq. 14
    (up to a constant; 0 as ``alpha -> inf``). Falls as ``log alpha`` grows: the prior pushes factors to noise.

    Example:
        >>> kl = kl_log_uniform(torch.ones(2), torch.tensor([-8.0, 4.0]))
        >>> bool(kl[0] > kl[1] > 0)
        True
    """
    la = log_alpha(mu, log_sigma2).clamp(-20, 20)
    neg_kl = _K1 * torch.sigmoid(_K2 + _K3 * la) - 0.5 * nn.functional.softplus(-la) - _K1
    return -neg_kl


def snr(mu: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
    """``|mu| / sigma``: how many posterior standard deviations the factor sits away from zero."""
    return mu.abs() / (0.5 * log_sigma2).exp()


def n_examples(train_data) -> int:
    """Number of training examples in ``train_data`` (a DataLoader over a sized dataset, or a list of batches)."""
    n = getattr(train_data, "num_samples", None)  # prunekit.data.TensorLoader
    if isinstance(n, int):
        return n
    ds = getattr(train_data, "dataset", None)
    if ds is not None:
        try:
            return len(ds)
        except TypeError:
            pass
    return sum(len(y) for _, y in train_data)


def _shape(out: torch.Tensor) -> list[int]:
    return [1, -1] + [1] * (out.dim() - 2)


class _PosteriorCallback(Callback):
    """Shared plumbing: the KL term added to the loss, the posterior's own optimizer, hooks and the generator."""

    prior: str

    def _setup(self, kl_weight: float, lr: float, seed: int, device) -> None:
        self.kl_weight = float(kl_weight)
        self.generator = torch.Generator(device=device).manual_seed(int(seed))
        self.optimizer = torch.optim.Adam(self.trainable(), lr=float(lr))
        self.steps = 0
        self.last_kl = 0.0

    def trainable(self) -> list[torch.Tensor]:  # pragma: no cover - overridden
        raise NotImplementedError

    def means(self) -> dict[str, torch.Tensor]:  # pragma: no cover - overridden
        raise NotImplementedError

    def kl(self) -> torch.Tensor:
        """``sum_c KL`` over every gated channel (a differentiable scalar)."""
        terms = []
        for fqn, mu in self.means().items():
            ls = self.log_sigma2[fqn]
            terms.append(kl_gaussian(mu, ls, self.prior_sigma) if self.prior == "gaussian"
                         else kl_log_uniform(mu, ls))
        return torch.cat(terms).sum()

    def stats(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{fqn: {"mu", "sigma", "snr", "log_alpha"}}`` (detached, on CPU)."""
        out = {}
        for fqn, mu in self.means().items():
            m, ls = mu.detach().float().cpu(), self.log_sigma2[fqn].detach().float().cpu()
            out[fqn] = {"mu": m, "sigma": (0.5 * ls).exp(), "snr": snr(m, ls), "log_alpha": log_alpha(m, ls)}
        return out

    def on_batch_start(self, state) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def on_before_backward(self, state) -> None:
        kl = self.kl()
        self.last_kl = float(kl.detach())
        state.loss = state.loss + self.kl_weight * kl

    def on_after_step(self, state) -> None:
        self.optimizer.step()
        self.steps += 1

    def state_dict(self) -> dict:
        """Everything that changes while training (for checkpoints and resume): the posterior parameters this
        callback owns, its optimizer, its noise generator and counters."""
        own = {f"{name}.{fqn}": t for name in ("mu", "log_sigma2") for fqn, t in getattr(self, name, {}).items()}
        return {"tensors": {k: t.detach().clone() for k, t in own.items()}, "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "steps": self.steps, "last_kl": self.last_kl}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for key, value in state["tensors"].items():
                name, fqn = key.split(".", 1)
                getattr(self, name)[fqn].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.steps, self.last_kl = int(state["steps"]), float(state["last_kl"])

    def remove(self) -> None:
        """Detach the forward hooks (idempotent); the model then computes with the posterior mean."""
        for h in self._handles:
            h.remove()
        self._handles = []


class BNSaliencyPosterior(_PosteriorCallback):
    """VCP's variational pruning layer: BN scale ``gamma_c ~ N(bn.weight_c, sigma_c^2)`` with a Gaussian prior.

    ``bns`` maps FQNs to affine BatchNorm modules. ``prior_sigma`` is the prior's standard deviation,
    ``init_sigma`` the posterior's at the start, ``kl_weight`` the KL's factor in the loss (``1/N`` for the
    ELBO per example). ``log_sigma2`` (one tensor per BN) is trained by this callback's Adam at ``lr``.

    Example:
        >>> bn = nn.BatchNorm1d(3); post = BNSaliencyPosterior({"bn": bn}, prior_sigma=1.0, init_sigma=1.0)
        >>> round(float(post.kl().detach()), 4)  # mu = 1, sigma = prior: KL = mu^2 / 2 per channel
        1.5
        >>> post.remove()
    """

    prior = "gaussian"

    def __init__(self, bns: dict[str, nn.Module], *, prior_sigma: float = 1.0, init_sigma: float = 0.1,
                 kl_weight: float = 1.0, lr: float = 1e-2, seed: int = 0):
        self.bns = dict(bns)
        self.prior_sigma = float(prior_sigma)
        device = next(iter(self.bns.values())).weight.device if self.bns else "cpu"
        self.log_sigma2 = {f: torch.full_like(bn.weight.detach(), 2 * math.log(init_sigma)).requires_grad_()
                           for f, bn in self.bns.items()}
        self._handles = [bn.register_forward_hook(self._hook(f)) for f, bn in self.bns.items()]
        self._setup(kl_weight, lr, seed, device)

    def trainable(self) -> list[torch.Tensor]:
        return list(self.log_sigma2.values())

    def means(self) -> dict[str, torch.Tensor]:
        return {f: bn.weight for f, bn in self.bns.items()}

    def _hook(self, fqn: str):
        def hook(bn, args, out):
            if not bn.training:
                return out
            x = args[0]
            dims = [d for d in range(x.dim()) if d != 1]
            mean = x.mean(dims, keepdim=True)
            var = x.var(dims, unbiased=False, keepdim=True)
            x_hat = (x - mean) / torch.sqrt(var + bn.eps)
            shape = [x.shape[0], x.shape[1]] + [1] * (x.dim() - 2)
            eps = torch.randn(shape, generator=self.generator, device=x.device, dtype=x.dtype)
            sigma = (0.5 * self.log_sigma2[fqn]).exp().view(_shape(out))
            return out + sigma * eps * x_hat

        return hook


class ChannelNoiseGates(_PosteriorCallback):
    """Multiplicative channel noise ``theta_c ~ N(mu_c, sigma_c^2)`` on the outputs of ``modules`` (RBP).

    ``modules`` maps FQNs to Conv/Linear or BatchNorm modules whose output channels (dim 1) are gated. The means
    start at 1 and, with the log-variances, are trained by this callback's Adam at ``lr``. ``prior`` is
    ``"log-uniform"`` (:func:`kl_log_uniform`) or ``"gaussian"`` (:func:`kl_gaussian` with ``prior_sigma``).
    In eval mode the gate is its mean. :meth:`fold_` multiplies the means into the modules and removes the
    hooks, after which the plain model computes exactly what the eval-mode gated one did.

    Example:
        >>> lin = nn.Linear(2, 3); g = ChannelNoiseGates({"lin": lin})
        >>> with torch.no_grad(): _ = g.mu["lin"].copy_(torch.tensor([1.0, 0.0, 2.0]))
        >>> _ = lin.eval(); x = torch.randn(4, 2); y = lin(x); g.fold_()
        >>> torch.allclose(lin(x), y)
        True
    """

    def __init__(self, modules: dict[str, nn.Module], *, prior: Literal["log-uniform", "gaussian"] = "log-uniform",
                 prior_sigma: float = 1.0, init_log_alpha: float = -8.0, kl_weight: float = 1.0, lr: float = 1e-2,
                 seed: int = 0):
        self.modules = dict(modules)
        self.prior, self.prior_sigma = prior, float(prior_sigma)
        device = next(iter(self.modules.values())).weight.device if self.modules else "cpu"
        self.mu = {f: torch.ones(_width(m), device=device, requires_grad=True) for f, m in self.modules.items()}
        self.log_sigma2 = {f: torch.full((_width(m),), float(init_log_alpha), device=device, requires_grad=True)
                           for f, m in self.modules.items()}
        self._handles = [m.register_forward_hook(self._hook(f)) for f, m in self.modules.items()]
        self._setup(kl_weight, lr, seed, device)

    def trainable(self) -> list[torch.Tensor]:
        return [*self.mu.values(), *self.log_sigma2.values()]

    def means(self) -> dict[str, torch.Tensor]:
        return dict(self.mu)

    def _hook(self, fqn: str):
        def hook(mod, _args, out):
            mu = self.mu[fqn].view(_shape(out))
            if not mod.training:
                return out * mu
            shape = [out.shape[0], out.shape[1]] + [1] * (out.dim() - 2)
            eps = torch.randn(shape, generator=self.generator, device=out.device, dtype=out.dtype)
            sigma = (0.5 * self.log_sigma2[fqn]).exp().view(_shape(out))
            return out * (mu + sigma * eps)

        return hook

    def fold_(self) -> None:
        """Multiply each gate's mean into its module (weight rows and bias; BN scale and shift), detach hooks."""
        with torch.no_grad():
            for f, m in self.modules.items():
                mu = self.mu[f].detach()
                w = m.weight
                w.mul_(mu.to(w).view([-1] + [1] * (w.dim() - 1)))
                if getattr(m, "bias", None) is not None:
                    m.bias.mul_(mu.to(m.bias))
        self.remove()


def _width(m: nn.Module) -> int:
    for attr in ("out_channels", "out_features", "num_features"):
        if hasattr(m, attr):
            return int(getattr(m, attr))
    raise TypeError(f"cannot gate {type(m).__name__}: give Conv/Linear or BatchNorm modules")

