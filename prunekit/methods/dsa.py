"""DSA: per-layer keep ratios learned by gradient through a differentiable pruning process, under a FLOPs budget.

Paper: Xuefei Ning, Tianchen Zhao, Wenshuo Li, Peng Lei, Yu Wang, Huazhong Yang, "DSA: More Efficient Budgeted
Pruning via Differentiable Sparsity Allocation", ECCV 2020. https://arxiv.org/abs/2004.02164 (reference code:
walkerning/differentiable-sparsity-allocation, read to understand, not copied).

Budgeted pruning usually searches the per-layer ratios by trial and error. DSA makes the ratios differentiable:
every channel group ``k`` (channels tied by residual adds form one group) has a keep ratio ``alpha_k``, and each
channel ``i`` a keep probability ``p_i = 1 / (1 + (beta1 / b_i)^beta2)`` from its base importance ``b_i`` (the
filter's L1 norm), where ``beta1`` is solved so that the mean of ``p`` over the group is exactly ``alpha_k``.
Channels are masked by Bernoulli samples of ``p`` (straight-through), so the task loss has a gradient with
respect to ``alpha_k``, obtained by implicit differentiation through the solved ``beta1``. The budget is a
differentiable FLOPs model ``F(alpha)`` (a conv costs ``alpha_in * alpha_out`` of its dense FLOPs) with the
constraint ``F(alpha) <= B``, handled by an ADMM-style scheme: a gradient step on the task loss plus the penalty
``rho / 2 * ||alpha - z + u||^2``, a projection ``z = P(alpha + u)`` onto the budget set, and the dual update
``u += alpha - z``; the weights train between the ratio steps. The final ratios cut each group's least important
channels and the network is fine-tuned.

Here: ``b`` from :func:`prunekit.methods._filter_common.filter_norms` (summed over a group's producers), the
``beta1`` root by bisection with the implicit gradient ``dp_i / dalpha = p_i (1 - p_i) / mean_j p_j (1 - p_j)``
(:func:`keep_probabilities`), masks on the BatchNorm outputs through
:class:`~prunekit.methods._soft_masks.ChannelMaskHooks`, ``F`` the engine's expected MACs
(:func:`prunekit.graph.expected_cost.expected_cost`), weights through :func:`prunekit.train.fit` on even batches
and the ratios by Adam on odd batches (a held-out split for ``alpha``, as the paper recalls). Not released, so
ours: the projection (one linearised step, ``z = clip(v - mu * grad F(v))`` with ``mu`` by bisection so that
``F(z) = B``), ``rho``, the ratio step size and the dual update after every ratio step. The final ratios are the
feasible ``z``; keep counts are ``floor(z_k * C_k)``, then channels are added back while the budget holds.

Telemetry: the expected MACs fraction of the final ratios and of the learned ``alpha``, the spread (std) of the
final ratios across groups, the largest move of a learned ``alpha`` from its start, the ratio steps taken and
the first step at which ``F(alpha) <= B``. Engaged when some learned ratio moved by at least 0.01.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..graph.expected_cost import expected_cost
from ..train import fit
from ..train.callbacks import Callback
from ..train.config import method_train_config
from ..train.loop import output_logits
from ..train.relaxed_widths import DataHalves
from ._config import MethodConfig, option
from ._filter_common import _graph, filter_groups, filter_norms, require_prune_epochs
from ._registry import MethodResult, RunContext, Telemetry, register_method
from ._soft_masks import ChannelMaskHooks, step_generator
from ..api import plan_channels, prune_

log = logging.getLogger(__name__)

__all__ = ["DSAConfig", "run", "keep_probabilities", "solve_log_beta1", "project_to_budget"]


@dataclass(frozen=True)
class DSAConfig(MethodConfig):
    importance: Literal["l1", "bn-scale"] = "l1"  # base importance b: the filter's L1 norm (paper sec. 3.2; |BN
    # gamma| is its variant)
    beta2: float = option(1.0, gt=0)  # steepness of p = 1 / (1 + (beta1 / b)^beta2) (models/op.py: init 1)
    init_logit: float = option(5.0)  # keep-ratio logit at the start, alpha = sigmoid(5) ~ keep all (models/op.py)
    alpha_lr: float = option(0.2, gt=0)  # Adam step of the ratio logits (ours: the training loop is not released)
    rho: float = option(1.0, gt=0)  # ADMM penalty weight (ours: not released)
    min_ratio: float = option(0.05, gt=0, lt=1)  # floor of a group's keep ratio in the projection (ours)


def solve_log_beta1(log_b: torch.Tensor, alpha: float, beta2: float, iters: int = 80) -> float:
    """``t = log beta1`` with ``mean(sigmoid(beta2 * (log_b - t))) = alpha``, by bisection (the mean falls in t)."""
    lo, hi = float(log_b.min()) - 60.0 / beta2, float(log_b.max()) + 60.0 / beta2
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if float(torch.sigmoid(beta2 * (log_b - mid)).mean()) > alpha:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def keep_probabilities(b: torch.Tensor, alpha: torch.Tensor, beta2: float) -> torch.Tensor:
    """DSA's differentiable pruning process: ``p_i = 1 / (1 + (beta1 / b_i)^beta2)`` with ``beta1`` solved so
    that ``mean(p) = alpha``; differentiable in ``alpha`` by the implicit function theorem.

    Example:
        >>> p = keep_probabilities(torch.tensor([1.0, 2.0, 4.0]), torch.tensor(0.5), 1.0)
        >>> round(float(p.mean()), 4), bool(p[0] < p[1] < p[2])
        (0.5, True)
    """
    log_b = torch.log(b.detach().double().clamp_min(1e-12))
    t_star = solve_log_beta1(log_b, float(alpha.detach()), beta2)
    p0 = torch.sigmoid(beta2 * (log_b - t_star))
    slope = (beta2 * p0 * (1 - p0)).mean().clamp_min(1e-12)  # d mean(p) / d(-t)
    t = t_star - (alpha.double() - alpha.detach().double()) / slope  # value t*, gradient dt/dalpha
    return torch.sigmoid(beta2 * (log_b - t)).to(b.dtype if b.is_floating_point() else torch.float32)


def project_to_budget(v: torch.Tensor, cost, budget: float, lo: float, iters: int = 50) -> torch.Tensor:
    """Ours (the paper's projection is not released): ``v`` itself when ``cost(v) <= budget``, else one linearised
    projection ``clip(v - mu * grad cost(v), lo, 1)`` with ``mu >= 0`` found by bisection so that the cost meets
    the budget. ``cost`` maps a ratio vector to a differentiable scalar."""
    v = v.detach().double().clamp(lo, 1.0)
    if float(cost(v)) <= budget:
        return v
    x = v.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(cost(x), x)
    g = g / g.abs().max().clamp_min(1e-30)

    def at(mu: float) -> torch.Tensor:
        return (v - mu * g).clamp(lo, 1.0)

    a, b = 0.0, 1.0
    while float(cost(at(b))) > budget and b < 1e6:
        b *= 2
    for _ in range(iters):
        mid = 0.5 * (a + b)
        if float(cost(at(mid))) > budget:
            a = mid
        else:
            b = mid
    return at(b)


@register_method(
    "dsa", config=DSAConfig, kind="structured", needs=("train",), status="partial",
    targets=("macs",), targets_why="its budget model prices FLOPs",
    left_out=("the paper's ADMM loop is not released: the projection onto the budget (one linearised step), rho, the "
              "ratio step size and the update schedule are ours, and at the benchmark's budget the ratios fall in lockstep "
              "(the task loss barely shapes them, docs/methods-search-6.md); FLOPs budgets only"),
    smoke={"alpha_lr": 2.0},
    telemetry=Telemetry(
        keys=("expected_macs_fraction", "learned_macs_fraction", "ratio_std", "alpha_moved", "alpha_steps",
              "budget_met_step"),
        engaged=lambda t: t["alpha_steps"] > 0 and t["alpha_moved"] >= 0.01,
        what="the keep ratios learning by gradient through the differentiable pruning process",
        knob="raise prune_epochs or options.alpha_lr"))
def run(ctx: RunContext, cfg: DSAConfig) -> MethodResult:
    require_prune_epochs(ctx, "dsa")
    model = ctx.model
    graph = _graph(model, ctx)
    groups = [g for g in filter_groups(model, ctx, graph) if g.convs or g.bns]
    mods = dict(model.named_modules())
    dev = next(model.parameters()).device
    dense = float(graph.macs())
    budget = ctx.target_value

    def importance(g) -> torch.Tensor:
        if cfg.importance == "l1" and g.convs:
            return sum(filter_norms(mods[c].weight.detach(), 1).cpu() for c in g.convs)
        return sum(mods[b].weight.detach().abs().cpu() for b in g.bns) if g.bns else \
            sum(filter_norms(mods[c].weight.detach(), 1).cpu() for c in g.convs)

    def cost(ratios: torch.Tensor) -> torch.Tensor:  # F(alpha) / dense: the expected MACs at ratios per group
        keep = {g.group.id: ratios[i] * torch.ones(g.width, dtype=ratios.dtype) for i, g in enumerate(groups)}
        return expected_cost(graph, keep) / dense

    floor_cost = float(cost(torch.full((len(groups),), cfg.min_ratio, dtype=torch.float64)))
    if floor_cost > budget:
        raise ConfigError(f"target={ctx.target!r}: every group at min_ratio={cfg.min_ratio} still keeps "
                          f"{floor_cost:.3f} of the MACs; lower options.min_ratio or ask for a larger target")
    logits = torch.full((len(groups),), cfg.init_logit, requires_grad=True)
    alpha0 = torch.sigmoid(logits.detach()).clone()
    opt = torch.optim.Adam([logits], lr=cfg.alpha_lr)
    z = project_to_budget(alpha0, cost, budget, cfg.min_ratio)
    u = torch.zeros_like(z)
    owner = {f: i for i, g in enumerate(groups) for f in (g.bns or g.convs)}
    masks: dict[int, torch.Tensor] = {}
    track = {"steps": 0, "met": -1}

    def resample(step: int, with_grad: bool) -> None:
        gen = step_generator(ctx.seed, step)
        alpha = torch.sigmoid(logits if with_grad else logits.detach())
        for i, g in enumerate(groups):
            p = keep_probabilities(importance(g), alpha[i], cfg.beta2)
            hard = torch.bernoulli(p.detach(), generator=gen)
            masks[i] = (hard + p - p.detach()).to(dev)  # straight-through Bernoulli mask

    class _Allocate(Callback):
        def state_dict(self) -> dict:  # what a resumed run needs: the ratio logits, their optimizer, z and u
            return {"logits": logits.detach().clone(), "opt": opt.state_dict(), "z": z.clone(), "u": u.clone(),
                    "track": dict(track)}

        def load_state_dict(self, sd: dict) -> None:
            nonlocal z, u
            with torch.no_grad():
                logits.copy_(sd["logits"])
            opt.load_state_dict(sd["opt"])
            z, u = sd["z"].clone(), sd["u"].clone()
            track.update(sd["track"])

        def on_batch_start(self, state) -> None:
            resample(2 * state.step, with_grad=False)

        def on_after_step(self, state) -> None:  # the ratio step on the other half, then z and u
            nonlocal z, u
            if not halves.arch:
                return
            x, y = halves.arch.popleft()
            resample(2 * state.step + 1, with_grad=True)
            alpha = torch.sigmoid(logits)
            loss = F.cross_entropy(output_logits(model(x.to(dev))), y.to(dev))
            loss = loss + cfg.rho / 2 * ((alpha.double() - z + u) ** 2).sum().float()
            (grad,) = torch.autograd.grad(loss, [logits])
            logits.grad = grad
            opt.step()
            opt.zero_grad(set_to_none=True)
            track["steps"] += 1
            alpha = torch.sigmoid(logits.detach()).double()
            z = project_to_budget(alpha + u, cost, budget, cfg.min_ratio)
            u = u + alpha - z
            if track["met"] < 0 and float(cost(alpha)) <= budget:
                track["met"] = track["steps"]

    halves = DataHalves(ctx.train_data)
    hooks = ChannelMaskHooks({f: mods[f] for f in owner}, lambda fqn, training: masks[owner[fqn]])
    try:
        fit(model, halves, method_train_config(ctx), callbacks=[_Allocate()])
    finally:
        hooks.remove()
    ratios = z.float()
    kept = _keep_counts(ratios, groups, cost, budget)
    removal = {}
    for i, g in enumerate(groups):
        order = torch.argsort(importance(g), descending=True, stable=True)
        drop = sorted(int(c) for c in order[kept[i]:])
        if drop:
            removal[g.key] = drop
    report = prune_(model, plan_channels(model, ctx.example_inputs, removal, ignore=list(ctx.ignore))).to_dict()
    after = float(_graph(model, ctx).macs())
    learned = torch.sigmoid(logits.detach())
    telemetry = {"expected_macs_fraction": float(cost(ratios.double())),
                 "learned_macs_fraction": float(cost(learned.double())), "ratio_std": float(ratios.std()),
                 "alpha_moved": float((learned - alpha0).abs().max()), "alpha_steps": track["steps"],
                 "budget_met_step": track["met"]}
    log.info("dsa: ratios %s keep %.3f of the MACs (expected %.3f)", np.round(ratios.numpy(), 3), after / dense,
             telemetry["expected_macs_fraction"])
    return MethodResult(model=model, telemetry=telemetry, info={
        "target": ctx.target, "kept_macs_fraction": after / dense,
        "ratios": {g.key: round(float(ratios[i]), 4) for i, g in enumerate(groups)},
        "widths": {g.key: int(kept[i]) for i, g in enumerate(groups)}, "engine_report": report})


def _keep_counts(ratios: torch.Tensor, groups, cost, budget: float) -> list[int]:
    """``floor(ratio * width)`` (at least 1) per group, then one channel back at a time, largest remainder first,
    while the expected cost at the counts stays within the budget (ours: the rounding of the final ratios)."""
    widths = torch.tensor([g.width for g in groups], dtype=torch.float64)
    exact = ratios.double() * widths
    kept = exact.floor().clamp(1, None)
    for i in torch.argsort(exact - exact.floor(), descending=True).tolist():
        if kept[i] < widths[i]:
            kept[i] += 1
            if float(cost(kept / widths)) > budget:
                kept[i] -= 1
    return [int(k) for k in kept]
