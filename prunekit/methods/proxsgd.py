"""ProxSGD: a proximal stochastic optimizer for L1 / group-lasso regularised and box-constrained training.

Paper: "ProxSGD: Training Structured Neural Networks under Regularization and Constraints", Yang Yang,
Yaxiong Yuan, Avraam Chatzimichailidis, Ruud J. G. van Sloun, Lei Lei, Symeon Chatzinotas. ICLR 2020.
https://openreview.net/forum?id=HygpthEtvr

ProxSGD trains the network and the sparsity at once by treating the regulariser the way proximal methods
do: the smooth loss is linearised with a momentum average of the stochastic gradients, a per-coordinate
curvature estimate (the square root of a running mean of squared gradients, as in Adam) turns it into a
small quadratic model, and that model plus the non-smooth term (an L1 penalty, a group lasso over output
neurons, optionally a box constraint) is minimised in closed form: a soft threshold (or group soft
threshold) followed by a clip. The weights then move only part of the way towards that minimiser, with
step and momentum weights that shrink over time as the convergence proof requires. A weight whose
minimiser is zero is pulled geometrically to zero; when training stops, the weights whose last proximal
point was zero are set exactly to zero (the "snap") and masked, which is the pruning.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..errors import ConfigError
from ..masks import install_masks_, prunable_weights, select_masks, get_pattern, view2d
from ..train.callbacks import Callback, TrainState
from ..train.config import method_train_config
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method
from .._registry import closest
from ..train import fit

log = logging.getLogger(__name__)

__all__ = ["ProxSGD", "UseProxSGD", "prox_l1", "prox_group", "ProxSGDConfig", "run"]

REGULARIZERS = ("l1", "group", "none")


def prox_l1(z: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """``argmin_x 0.5 (x - z)^2 / t + |x|`` per coordinate: soft thresholding by ``threshold``.

    Example:
        >>> prox_l1(torch.tensor([0.5, 0.05, -0.3]), 0.1)
        tensor([ 0.4000,  0.0000, -0.2000])
    """
    return torch.sign(z) * torch.clamp(z.abs() - threshold, min=0.0)


def prox_group(z: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Group soft threshold over the rows of the 2-D view (one group per output neuron / filter).

    ``threshold`` is one value per row; a row whose norm is below it becomes exactly zero.

    Example:
        >>> prox_group(torch.tensor([[3.0, 4.0], [0.1, 0.1]]), torch.tensor([1.0, 1.0]))
        tensor([[2.4000, 3.2000],
                [0.0000, 0.0000]])
    """
    z2 = view2d(z)
    norms = z2.norm(dim=1, keepdim=True)
    scale = torch.clamp(1.0 - threshold.reshape(-1, 1) / norms.clamp_min(1e-30), min=0.0)
    return (z2 * scale).reshape(z.shape)


class ProxSGD(torch.optim.Optimizer):
    """ProxSGD (Yang et al., ICLR 2020). Per parameter group: ``mu`` (regulariser weight, 0 = none),
    ``regularizer`` (``"l1"`` or ``"group"`` over output rows), ``box`` (``(low, high)`` or None).

    Step ``t`` (from 0): ``rho = rho0 / (t + 4) ** rho_decay``, ``eps = lr / (t + 4) ** eps_decay``;
    ``v = (1 - rho) v + rho g``; ``r = beta r + (1 - beta) g^2`` (bias-corrected); ``tau = sqrt(r) + delta``;
    ``x_hat = clip(prox_{mu/tau}(x - v / tau))``; ``x = x + eps (x_hat - x)``. ``lr`` plays ``epsilon_0``.
    The last proximal point's zeros are kept in ``state[p]["prox_zero"]`` (see :meth:`snap_`).

    Example:
        >>> p = nn.Parameter(torch.tensor([0.5, -0.001]))
        >>> opt = ProxSGD([p], lr=0.5, mu=1e-2)
        >>> p.grad = torch.zeros(2); _ = opt.step()
        >>> p.detach()  # g = v = 0: tau = delta, mu/tau is huge, x_hat = 0; x moves eps = 0.5/sqrt(4) there
        tensor([ 0.3750, -0.0008])
    """

    def __init__(self, params, lr: float = 0.06, *, mu: float = 1e-4, regularizer: str = "l1", box=None,
                 rho: float = 0.9, eps_decay: float = 0.5, rho_decay: float = 0.5, beta: float = 0.999,
                 delta: float = 1e-7):
        problems = []
        for name, value, ok, fix in (
                ("lr", lr, lr > 0, "use a positive epsilon_0 such as 0.06"),
                ("mu", mu, mu >= 0, "use 0 (no regulariser) or a small positive weight such as 1e-4"),
                ("rho", rho, 0 < rho <= 1, "use a value in (0, 1], e.g. 0.9"),
                ("beta", beta, 0 <= beta < 1, "use a value in [0, 1), e.g. 0.999"),
                ("delta", delta, delta > 0, "use a small positive value such as 1e-7"),
                ("eps_decay", eps_decay, eps_decay >= 0, "use a non-negative exponent such as 0.5"),
                ("rho_decay", rho_decay, rho_decay >= 0, "use a non-negative exponent such as 0.5")):
            if not ok:
                problems.append(f"{name}={value!r} is out of range; {fix}")
        problems += _check_group_args(regularizer, box)
        if problems:
            raise ConfigError("ProxSGD: " + "; ".join(problems))
        super().__init__(params, dict(lr=lr, mu=mu, regularizer=regularizer, box=box, rho=rho,
                                      eps_decay=eps_decay, rho_decay=rho_decay, beta=beta, delta=delta))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["v"] = torch.zeros_like(p)
                    st["r"] = torch.zeros_like(p)
                t = st["step"]
                rho = min(1.0, group["rho"] / (t + 4) ** group["rho_decay"])
                eps = group["lr"] / (t + 4) ** group["eps_decay"]
                g = p.grad
                st["v"].mul_(1 - rho).add_(g, alpha=rho)
                st["r"].mul_(group["beta"]).addcmul_(g, g, value=1 - group["beta"])
                r_hat = st["r"] / (1 - group["beta"] ** (t + 1)) if group["beta"] > 0 else st["r"]
                tau = r_hat.sqrt().add_(group["delta"])
                z = p - st["v"] / tau
                x_hat = _prox(z, tau, group)
                st["prox_zero"] = x_hat == 0
                p.add_(x_hat - p, alpha=eps)
                st["step"] = t + 1
        return loss

    @torch.no_grad()
    def snap_(self) -> dict[int, torch.Tensor]:
        """Set to exactly zero every entry whose last proximal point was zero; returns ``{id(p): kept}``."""
        kept = {}
        for group in self.param_groups:
            if group["mu"] == 0:
                continue
            for p in group["params"]:
                zero = self.state.get(p, {}).get("prox_zero")
                if zero is not None:
                    p.masked_fill_(zero, 0.0)
                    kept[id(p)] = ~zero
        return kept


def _check_group_args(regularizer, box) -> list[str]:
    out = []
    if regularizer not in REGULARIZERS:
        hint = closest(str(regularizer), REGULARIZERS)
        out.append(f"regularizer={regularizer!r} is unknown" + (f"; did you mean {hint!r}?" if hint else "")
                   + f" Choose one of {REGULARIZERS}")
    if box is not None and not (isinstance(box, (tuple, list)) and len(box) == 2 and box[0] < box[1]):
        out.append(f"box={box!r} must be None or (low, high) with low < high, e.g. (-1.0, 1.0)")
    return out


def _prox(z: torch.Tensor, tau: torch.Tensor, group: dict) -> torch.Tensor:
    mu = group["mu"]
    if mu > 0 and group["regularizer"] == "l1":
        z = prox_l1(z, mu / tau)
    elif mu > 0 and group["regularizer"] == "group":
        # one curvature per group (its mean) keeps the group prox in closed form
        z = prox_group(z, mu / view2d(tau).mean(dim=1))
    if group["box"] is not None:
        z = z.clamp(group["box"][0], group["box"][1])
    return z


class UseProxSGD(Callback):
    """Train with :class:`ProxSGD` inside :func:`prunekit.train.fit`: replaces fit's optimizer at the start.

    The prunable weights (Linear/Conv, minus ``ignore``/``exempt``) get ``mu``/``regularizer``; every
    other parameter gets the same update with ``mu = 0``. ProxSGD decays its own step size, so fit's
    learning-rate schedule is replaced by a constant one. With ``harden_at_end`` the final proximal zeros are
    snapped to exact zeros and kept with hard masks; ``kept`` holds those masks.
    """

    def __init__(self, *, lr: float = 0.06, mu: float = 1e-4, regularizer: str = "l1", box=None, ignore=(),
                 exempt=(), harden_at_end: bool = True, **kwargs):
        self.kwargs = dict(lr=lr, mu=mu, regularizer=regularizer, box=box, **kwargs)
        ProxSGD([nn.Parameter(torch.zeros(1))], **self.kwargs)  # validate now, not at the first batch
        self.ignore, self.exempt, self.harden_at_end = ignore, exempt, harden_at_end
        self.optimizer: ProxSGD | None = None
        self.kept: dict[str, torch.Tensor] = {}

    def on_train_start(self, state: TrainState) -> None:
        weights = prunable_weights(state.model, self.ignore, self.exempt)
        ids = {id(p) for p in weights.values()}
        rest = [p for p in state.model.parameters() if p.requires_grad and id(p) not in ids]
        groups = [{"params": [p for p in weights.values() if p.requires_grad]}]
        if rest:
            groups.append({"params": rest, "mu": 0.0, "box": None})
        self.optimizer = ProxSGD(groups, **self.kwargs)
        self._weights = weights
        state.optimizer = self.optimizer
        state.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1.0)

    def on_train_end(self, state: TrainState) -> None:
        if not self.harden_at_end or self.optimizer is None:
            return
        kept = self.optimizer.snap_()
        self.kept = {fqn: kept[id(p)] for fqn, p in self._weights.items() if id(p) in kept}
        if self.kept:
            install_masks_(state.model, self.kept, mode="hard")


@dataclass(frozen=True)
class ProxSGDConfig(MethodConfig):
    lr: float = option(0.06, gt=0)  # epsilon_0 (reference optimiser, ProxSGD_optimizer.py)
    mu: float = option(1e-4, ge=0)  # L1 weight (reference optimiser)
    regularizer: Literal["l1", "group", "none"] = "l1"  # l1 (sec. 4.1); group lasso over rows (sec. 4.2)
    box: tuple[float, float] | None = None  # (low, high) constraint, e.g. (-1, 1) (sec. 4.3); None = unconstrained
    rho: float = option(0.9, gt=0, le=1)  # momentum weight rho_0 (reference optimiser)
    eps_decay: float = option(0.5, ge=0)  # epsilon_t = epsilon_0 / (t + 4) ** eps_decay (reference optimiser)
    rho_decay: float = option(0.5, ge=0)  # rho_t = rho_0 / (t + 4) ** rho_decay (reference optimiser)
    beta: float = option(0.999, ge=0, lt=1)  # running mean of squared gradients (reference optimiser)
    delta: float = option(1e-7, gt=0)  # added to the curvature tau (reference optimiser)
    top_up: bool = True  # ours: prune the smallest survivors globally when the proximal zeros are short (reported apart)
    exempt: tuple[str, ...] = ()  # ours: ("first",) / ("last",) keep those layers dense

    def __post_init__(self):
        if self.box is not None and not (len(self.box) == 2 and self.box[0] < self.box[1]):
            raise ValueError(f"options['box']={list(self.box)!r} must be (low, high) with low < high, e.g. (-1.0, 1.0)")


@register_method("proxsgd", config=ProxSGDConfig, kind="unstructured", needs=("train",),
                 telemetry=Telemetry(keys=("prox_zeros", "prox_zero_fraction", "emergent_sparsity", "topped_up"),
                                     engaged=lambda t: t["prox_zeros"] > 0,
                                     what="the proximal step set weights exactly to zero",
                                     knob="raise options.mu (the L1 weight of the proximal step) or prune_epochs"))
def run(ctx: RunContext, cfg: ProxSGDConfig) -> MethodResult:
    """Train ``ctx.prune_epochs`` with ProxSGD, snap its zeros, then (``top_up``) reach the target exactly."""
    train = method_train_config(ctx, max(1, ctx.prune_epochs))
    cb = UseProxSGD(ignore=ctx.ignore, exempt=cfg.exempt, lr=cfg.lr, mu=cfg.mu, regularizer=cfg.regularizer,
                    box=cfg.box, rho=cfg.rho, eps_decay=cfg.eps_decay, rho_decay=cfg.rho_decay, beta=cfg.beta,
                    delta=cfg.delta)
    fit(ctx.model, ctx.train_data, train, callbacks=[cb])
    numel = sum(p.numel() for p in cb._weights.values())
    prox_zeros = sum(int((~m).sum()) for m in cb.kept.values())
    emergent = prox_zeros / max(numel, 1)
    final = emergent
    if cfg.top_up and emergent < ctx.target_value:
        scores = {k: p.detach().abs() for k, p in cb._weights.items()}
        masks = select_masks(scores, get_pattern("element"), global_sparsity=ctx.target_value)
        install_masks_(ctx.model, masks, mode="hard")
        final = 1 - sum(int(m.sum()) for m in masks.values()) / numel
    telemetry = {"prox_zeros": prox_zeros, "prox_zero_fraction": emergent, "emergent_sparsity": emergent,
                 "topped_up": final - emergent}
    return MethodResult(ctx.model, info={"emergent_sparsity": emergent, "sparsity": final}, telemetry=telemetry)
