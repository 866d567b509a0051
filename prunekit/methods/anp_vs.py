"""ANP-VS: adversarial neural pruning with Beta-Bernoulli channel masks and vulnerability suppression.

Paper: Divyam Madaan, Jinwoo Shin, Sung Ju Hwang, "Adversarial Neural Pruning with Latent Vulnerability
Suppression", ICML 2020. https://arxiv.org/abs/1908.04355 (reference code: divyam3897/ANP_VS, TensorFlow)

An adversarial example moves the hidden features of a network; the paper calls the expected distortion
``E|z - z~|`` of a feature between a clean input and its PGD version the feature's vulnerability, and finds
that many features are vulnerable yet useless. ANP-VS prunes them during adversarial training: every hidden
unit or channel ``k`` gets a Bayesian multiplicative mask from Beta-Bernoulli dropout (``pi_k`` ~
Kumaraswamy(a_k, b_k), the mask a relaxed Bernoulli(pi_k) sample at temperature 0.1 while training and
``E[pi_k]`` at test time, a Beta(alpha, 1) prior with a closed-form KL), and the loss on PGD examples gets
two terms: ``beta * KL / N`` (drives masks to zero) and ``lambda * VS`` with VS the mean ``|z - z~|`` over the
hidden features (suppresses the latent vulnerability). Channels with ``E[pi_k] <= 1e-3`` are removed.

Here: the masks sit on the engine's channel groups (one mask per group, applied to each producing module,
or to its BatchNorm when it has one; the logits layer is never masked) and the features of the VS loss are
those masked outputs. PGD is :mod:`prunekit.train.adversarial` (run in eval mode, i.e. against the test-time
mask). :class:`ANPVSTraining` is the callback (any loop): it swaps each batch for its PGD version, draws one
mask sample per example, adds ``lambda * VS + beta * KL / N`` (and, with ``clean_weight``, the clean CE) and
steps the mask parameters with its own Adam. After ``prune_epochs`` the test-time mask ``E[pi]`` is folded
into the layers, channels at or below ``threshold`` are cut through the structural engine, and when the
model is still above ``ctx.target`` the lowest-``E[pi]`` channels go in one global ranking (reported apart).
The caller's fine-tune gets an adversarial-training callback.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from itertools import islice
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..api import plan_channels, prune_
from ..train import fit
from ..train.adversarial import AdversarialTraining, InputSpace, run_attack
from ..train.callbacks import Callback
from ..train.config import method_train_config
from ..train.loop import output_logits
from ..train.variational import n_examples
from ._config import MethodConfig, option
from ._filter_common import _graph, cut_to_target, filter_groups, require_prune_epochs
from ._registry import MethodResult, RunContext, Telemetry, register_method
from ._soft_masks import logistic_noise, relaxed_bernoulli, step_generator

__all__ = ["ANPVSConfig", "BetaBernoulliMasks", "ANPVSTraining", "kl_kumaraswamy_beta", "vulnerability", "cut_masked_",
           "run"]

EULER = 0.5772156649015329


@dataclass(frozen=True)
class ANPVSConfig(MethodConfig):
    eps: float = option(0.3, ge=0)  # PGD L-inf radius in pixels (paper/README, MNIST LeNet-5: 0.3)
    steps: int = option(20, ge=1)  # PGD iterations (paper/README, MNIST: 20)
    alpha: float = option(0.0, ge=0)  # PGD step in pixels; 0 = 2.5 * eps / steps (Madry et al.; ours for MNIST)
    random_start: bool = True  # PGD random start (reference attacks: random_start=True)
    vs_weight: float = option(1e-3, ge=0)  # lambda on the VS loss (paper/README, MNIST LeNet-5: 1e-3)
    kl_weight: float = option(4.0, ge=0)  # beta on KL / N (paper/README, MNIST LeNet-5: 4)
    prior_alpha: float = option(1e-4, gt=0)  # Beta(alpha, 1) prior (reference bbdropout.py: alpha=1e-4)
    temperature: float = option(0.1, gt=0)  # relaxed Bernoulli temperature (reference ber_concrete: 1e-1)
    threshold: float = option(1e-3, gt=0, lt=1)  # remove channels with E[pi] <= this (reference thres 1e-3)
    a_init: float = -1.0  # pre-softplus a of every mask at the start (reference a_uc_init -1.0)
    b_init: float = 0.5413  # pre-softplus b at the start, b = 1 (reference b_uc init 0.5413)
    mask_lr: float = option(1e-2, gt=0)  # Adam learning rate of the mask parameters (reference init_lr 1e-2)
    clean_weight: float = option(0.0, ge=0, le=1)  # CE mix (1-c) CE(PGD) + c CE(clean): paper 0; reference code 1/3
    clamp: Literal["data", "none"] = "data"  # ours: attacked pixels stay in [0, 1] (the loader's normalisation)
    eval_batches: int = option(2, ge=1)  # ours: batches (val, else calib, else train) for the vulnerability telemetry


def kl_kumaraswamy_beta(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """``KL(Kumaraswamy(a, b) || Beta(alpha, 1))`` per entry (Nalisnick & Smyth 2017 with the prior's beta = 1,
    where the series term vanishes): ``(1 - alpha/a)(-gamma - psi(b) - 1/b) + log(a b / alpha) - (b - 1)/b``.

    Example:
        >>> round(float(kl_kumaraswamy_beta(torch.tensor(1.0), torch.tensor(1.0), 1.0)), 6)  # U(0,1) vs U(0,1)
        0.0
    """
    return (1 - alpha / a) * (-EULER - torch.digamma(b) - 1 / b) + torch.log(a * b / alpha) - (b - 1) / b


class BetaBernoulliMasks:
    """One Beta-Bernoulli dropout mask per channel group (Lee et al. 2018, as used by ANP-VS).

    ``groups`` maps a key to ``(modules, width)``; each module's output channels (dim 1) are multiplied by the
    group's mask. Training mode: ``z = relaxed_bernoulli(pi, temperature)`` with ``pi`` ~ Kumaraswamy(a, b)
    drawn per example (reparameterised: ``pi = (1 - u^(1/b))^(1/a)``), one draw per :meth:`resample` shared by
    every forward until the next (the clean and the PGD pass see the same masks). Eval mode: ``E[pi]``, zero at
    or below ``threshold``. ``fixed=True``: every mask is exactly 1. ``features`` holds the masked outputs of
    the last forward while ``record`` is on.
    """

    def __init__(self, groups: dict, *, alpha: float = 1e-4, temperature: float = 0.1, threshold: float = 1e-3,
                 a_init: float = -1.0, b_init: float = 0.5413, seed: int = 0, fixed: bool = False):
        self.groups = dict(groups)
        self.alpha, self.temperature, self.threshold, self.fixed = float(alpha), float(temperature), threshold, fixed
        self.a_uc = {k: torch.full((w,), float(a_init), requires_grad=True) for k, (_, w) in self.groups.items()}
        self.b_uc = {k: torch.full((w,), float(b_init), requires_grad=True) for k, (_, w) in self.groups.items()}
        self.seed, self.step = seed, 0
        self.record, self.features = False, {}
        self._u: dict = {}
        self._handles = [m.register_forward_hook(self._hook(k)) for k, (mods, _) in self.groups.items() for m in mods]

    def params(self) -> list[torch.Tensor]:
        return [*self.a_uc.values(), *self.b_uc.values()]

    def ab(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``a = softplus(max(a_uc, -10))``, ``b = softplus(clip(b_uc, -10, 50))`` (the reference's bounds)."""
        return F.softplus(self.a_uc[key].clamp_min(-10.0)), F.softplus(self.b_uc[key].clamp(-10.0, 50.0))

    def expected_pi(self, key: str) -> torch.Tensor:
        """``E[pi] = b B(1 + 1/a, b)``: the test-time mask (before the threshold)."""
        a, b = self.ab(key)
        return b * torch.exp(torch.lgamma(1 + 1 / a) + torch.lgamma(b) - torch.lgamma(1 + 1 / a + b))

    def kl(self) -> torch.Tensor:
        return torch.stack([kl_kumaraswamy_beta(*self.ab(k), self.alpha).sum() for k in self.groups]).sum()

    def resample(self, step: int) -> None:
        self.step, self._u = step, {}

    def mask(self, key: str, n: int, training: bool) -> torch.Tensor:
        a, b = self.ab(key)
        if self.fixed:
            return torch.ones(1, a.numel())
        if not training:
            e = self.expected_pi(key)
            return torch.where(e > self.threshold, e, torch.zeros_like(e)).unsqueeze(0)
        if key not in self._u or self._u[key][0].shape[0] != n:
            g = step_generator(self.seed + len(self._u), self.step)
            u = torch.rand((n, a.numel()), generator=g).clamp(1e-10, 1 - 1e-10)
            self._u[key] = (u, logistic_noise((n, a.numel()), g))
        u, noise = self._u[key]
        pi = (1 - u.pow(1 / b)).pow(1 / a)
        return relaxed_bernoulli(pi, self.temperature, noise)

    def _hook(self, key: str):
        def hook(mod, _inp, out):
            z = self.mask(key, out.shape[0], mod.training).to(out)
            out = out * z.view(z.shape[0], -1, *([1] * (out.dim() - 2)))
            if self.record:
                self.features.setdefault(key, []).append(out)
            return out

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _vs(clean: dict, adv: dict) -> torch.Tensor:
    terms = [(c - a).abs().mean() for k in clean for c, a in zip(clean[k], adv.get(k, []))]
    return torch.stack(terms).mean() if terms else torch.zeros(())


class ANPVSTraining(Callback):
    """The ANP-VS objective inside any training loop (see the module docstring).

    ``state.inputs`` becomes the PGD version of the batch; the loop's loss on it is the adversarial CE; this
    adds ``vs_weight * VS + kl_weight * KL / n`` (and ``clean_weight * (CE_clean - CE_adv)``) and steps the mask
    parameters (Adam, ``lr``). ``attacked`` counts the replaced batches, ``last_vs`` is the latest VS value.
    """

    def __init__(self, masks: BetaBernoulliMasks, *, n: int, eps: float, steps: int, alpha: float | None = None,
                 random_start: bool = True, space: InputSpace | None = None, vs_weight: float = 1e-3,
                 kl_weight: float = 4.0, clean_weight: float = 0.0, lr: float = 1e-2, seed: int = 0):
        self.masks, self.n = masks, max(1, int(n))
        self.attack = dict(eps=eps, alpha=alpha, steps=steps, random_start=random_start, space=space)
        self.vs_weight, self.kl_weight, self.clean_weight = vs_weight, kl_weight, clean_weight
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer = torch.optim.Adam(masks.params(), lr=lr) if not masks.fixed else None
        self.attacked, self.last_vs, self.clean = 0, 0.0, None

    def on_batch_start(self, state) -> None:
        self.masks.resample(state.step)
        self.clean = state.inputs
        if self.attack["eps"] > 0:
            state.inputs = run_attack(state.model, state.inputs, state.targets, "pgd", generator=self.generator,
                                      **self.attack)
            self.attacked += 1
        self.masks.features, self.masks.record = {}, self.vs_weight > 0

    def on_before_backward(self, state) -> None:
        adv = self.masks.features
        self.masks.features, self.masks.record = {}, False
        extra = torch.zeros((), device=state.loss.device)
        if self.vs_weight > 0 or self.clean_weight > 0:
            self.masks.record = self.vs_weight > 0
            out = output_logits(state.model(self.clean))
            self.masks.record = False
            if self.vs_weight > 0:
                vs = _vs(self.masks.features, adv)
                self.last_vs = float(vs.detach())
                extra = extra + self.vs_weight * vs
            if self.clean_weight > 0:
                extra = extra + self.clean_weight * (F.cross_entropy(out, state.targets) - state.loss)
        if self.kl_weight > 0 and not self.masks.fixed:
            extra = extra + self.kl_weight * self.masks.kl() / self.n
        self.masks.features = {}
        state.loss = state.loss + extra

    def on_after_step(self, state) -> None:
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        """What changes while training (checkpoints, ``prunekit run --resume``): the mask parameters, their Adam,
        the attack's generator and the counters (the mask noise is drawn from ``(seed, step)``)."""
        own = {f"{name}.{k}": t.detach().clone() for name in ("a_uc", "b_uc")
               for k, t in getattr(self.masks, name).items()}
        return {"tensors": own, "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
                "generator": self.generator.get_state(), "attacked": self.attacked, "last_vs": self.last_vs}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for key, value in state["tensors"].items():
                name, k = key.split(".", 1)
                getattr(self.masks, name)[k].copy_(value)
        if self.optimizer is not None and state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.attacked, self.last_vs = int(state["attacked"]), float(state["last_vs"])


@torch.no_grad()
def vulnerability(model: nn.Module, modules: dict[str, list[nn.Module]], data, *, eps: float, steps: int,
                  alpha: float | None = None, space: InputSpace | None = None, seed: int = 0) -> float:
    """Mean ``|z - z~|`` over the outputs of ``modules`` (``{key: [modules]}``) between each input of ``data`` and
    its PGD version (eval mode): the paper's network vulnerability, measured."""
    feats: dict = {}
    handles = [m.register_forward_hook(lambda mod, i, o, k=k: feats.setdefault(k, []).append(o.detach()))
               for k, mods in modules.items() for m in mods]
    gen, total, count = torch.Generator().manual_seed(seed), 0.0, 0
    was = model.training
    model.eval()
    try:
        for x, y in data:
            with torch.enable_grad():
                adv = run_attack(model, x, y, "pgd", eps, alpha=alpha, steps=steps, space=space, generator=gen)
            feats.clear()
            model(x)
            clean = dict(feats)
            feats.clear()
            model(adv)
            total += float(_vs(clean, dict(feats)))
            count += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return total / max(1, count)


def _fold_(model: nn.Module, modules: list[str], scale: torch.Tensor) -> None:
    """Multiply ``scale`` into the output channels of each module (weight rows and bias; a BN's scale/shift)."""
    mods = dict(model.named_modules())
    with torch.no_grad():
        for f in modules:
            m = mods[f]
            m.weight.mul_(scale.to(m.weight).view([-1] + [1] * (m.weight.dim() - 1)))
            if getattr(m, "bias", None) is not None:
                m.bias.mul_(scale.to(m.bias))


def cut_masked_(model: nn.Module, ctx: RunContext, gated: dict[str, list[str]], epi: dict[str, torch.Tensor],
                threshold: float) -> dict[str, torch.Tensor]:
    """Make the plain model compute what the eval-mode masked one did: fold the test-time mask (``E[pi]``, zero
    at or below ``threshold``) into each group's modules (``gated``: ``{key: [module fqns]}``), then remove the
    channels at or below the threshold through the structural engine (a group keeps at least one channel).
    Returns ``{key: removed channel indices}``."""
    under = {k: torch.nonzero(e <= threshold).flatten()[: len(e) - 1] for k, e in epi.items()}
    for k, fs in gated.items():
        _fold_(model, fs, torch.where(epi[k] > threshold, epi[k], torch.zeros_like(epi[k])))
    chosen = {k: v.tolist() for k, v in under.items() if len(v)}
    if chosen:
        prune_(model, plan_channels(model, ctx.example_inputs, chosen, ignore=list(ctx.ignore)))
    return under


def _engaged(t: dict) -> bool:
    return t["attacked"] > 0 and t["channels_under_threshold"] > 0


@register_method("anp-vs", config=ANPVSConfig, kind="structured", needs=("train",), status="partial",
                 left_out="the masks sit on whole channel groups (the reference also masks the flattened inputs of "
                          "the first dense layer unit by unit); the mask and weight parameters share one backward (the "
                          "reference trains the masks on CE(PGD) + KL only); the Bayesian-weight variant is left out",
                 smoke={"steps": 1, "kl_weight": 400.0, "mask_lr": 0.1, "eval_batches": 1},
                 telemetry=Telemetry(keys=("attacked", "channels_under_threshold", "channels", "channel_sparsity",
                                           "topped_up", "vulnerability_before", "vulnerability_after", "kl"),
                                     engaged=_engaged,
                                     what="Beta-Bernoulli masks trained on PGD examples driving channels to "
                                          "E[pi] <= threshold",
                                     knob="raise options.kl_weight (beta), options.mask_lr or prune_epochs; "
                                          "options.eps > 0 for PGD examples"))
def run(ctx: RunContext, cfg: ANPVSConfig) -> MethodResult:
    """Adversarial training with Beta-Bernoulli masks and the VS loss; cut the channels whose E[pi] is tiny."""
    require_prune_epochs(ctx, "anp-vs")
    model = ctx.model
    space = InputSpace.of(ctx.train_data) if cfg.clamp == "data" else None
    probe = [(x.to(ctx.device), y.to(ctx.device)) for x, y in
             islice(ctx.val_data or ctx.calib or ctx.train_data, cfg.eval_batches)]
    graph = _graph(model, ctx)
    dense = graph.macs() if ctx.target_kind == "macs" else graph.params()
    groups = filter_groups(model, ctx, graph)
    mods = dict(model.named_modules())
    gated = {g.key: (g.bns or g.convs) for g in groups}
    attack = dict(eps=cfg.eps, steps=cfg.steps, alpha=cfg.alpha or None)
    feature_mods = {k: [mods[f] for f in fs] for k, fs in gated.items()}
    v_before = vulnerability(model, feature_mods, probe, space=space, seed=ctx.seed, **attack)
    masks = BetaBernoulliMasks({k: (feature_mods[k], g.width) for k, g in zip(gated, groups)},
                               alpha=cfg.prior_alpha, temperature=cfg.temperature, threshold=cfg.threshold,
                               a_init=cfg.a_init, b_init=cfg.b_init, seed=ctx.seed)
    trainer = ANPVSTraining(masks, n=n_examples(ctx.train_data), random_start=cfg.random_start, space=space,
                            vs_weight=cfg.vs_weight, kl_weight=cfg.kl_weight, clean_weight=cfg.clean_weight,
                            lr=cfg.mask_lr, seed=ctx.seed, **attack)
    try:
        fit(model, ctx.train_data, method_train_config(ctx), callbacks=[trainer])
    finally:
        masks.remove()
    with torch.no_grad():
        epi = {k: masks.expected_pi(k).detach() for k in gated}
        kl = float(masks.kl())
    under = cut_masked_(model, ctx, gated, epi, cfg.threshold)
    now_graph = _graph(model, ctx)
    now = now_graph.macs() if ctx.target_kind == "macs" else now_graph.params()
    topped = 0
    report: dict = {}
    if now > ctx.target_value * dense * (1 + 1e-9):  # ours: the rest by lowest E[pi], reported apart
        gone = {k: set(v.tolist()) for k, v in under.items()}
        kept = {k: e[torch.tensor([i not in gone[k] for i in range(len(e))])] for k, e in epi.items()}
        rest = dataclasses.replace(ctx, target=f"{ctx.target_kind}={ctx.target_value * dense / now}")
        rest.target_kind, rest.target_value = ctx.target_kind, ctx.target_value * dense / now
        width = sum(g.width for g in filter_groups(model, ctx))
        report = cut_to_target(model, rest, {k: v for k, v in kept.items() if len(v) > 1}, allocation="global")
        topped = width - sum(g.width for g in filter_groups(model, ctx))
    final = _graph(model, ctx)
    n_under, total = sum(len(v) for v in under.values()), sum(len(e) for e in epi.values())
    telemetry = {"attacked": trainer.attacked, "channels_under_threshold": n_under, "channels": total,
                 "channel_sparsity": n_under / max(1, total), "topped_up": topped, "vulnerability_before": v_before,
                 "vulnerability_after": vulnerability(model, _feature_modules(model, ctx), probe, space=space,
                                                      seed=ctx.seed, **attack),
                 "kl": kl}
    info = {"removed_per_group": {k: len(v) for k, v in under.items()}, "last_vs": trainer.last_vs,
            "expected_pi": {k: [round(float(x), 6) for x in e] for k, e in epi.items()},
            f"kept_{ctx.target_kind}_fraction": (final.macs() if ctx.target_kind == "macs" else final.params()) / dense,
            "epochs_trained": ctx.prune_epochs, "eps": cfg.eps, "pgd_steps": cfg.steps, "top_up": report}
    retrain = AdversarialTraining(cfg.eps, attack="pgd", alpha=cfg.alpha or None, steps=cfg.steps,
                                  random_start=cfg.random_start, space=space, seed=ctx.seed + 1)
    return MethodResult(model=model, callbacks=[retrain], info=info, telemetry=telemetry)


def _feature_modules(model: nn.Module, ctx: RunContext) -> dict[str, list[nn.Module]]:
    """The masked modules of the (pruned) model, for the vulnerability after the cut."""
    mods = dict(model.named_modules())
    return {g.key: [mods[f] for f in (g.bns or g.convs)] for g in filter_groups(model, ctx, _graph(model, ctx))}
