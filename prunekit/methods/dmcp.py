"""DMCP: Differentiable Markov Channel Pruning.

Paper: Shaopeng Guo, Yujie Wang, Quanquan Li, Junjie Yan, "DMCP: Differentiable Markov Channel Pruning for
Neural Networks", CVPR 2020 (oral). https://arxiv.org/abs/2005.03354 (reference code, read to understand:
github.com/Zx55/dmcp, ``models/dmcp/alpha_op.py``, ``runner/dmcp_runner.py``).

Channel pruning is read as a search for *widths*, not for channel identities: a layer always keeps its first
channels. Each layer's channels are a fixed minimum part plus equal steps (10% of the width each); keeping is a
Markov chain over the steps: step k can be kept only if step k-1 is, with transition probability
``p_k = sigmoid(alpha_k)``, so the marginal probability that step k is kept is the product ``p_1 ... p_k``
(non-increasing by construction, and one width has one probability, which independent gates do not give).
Training runs in two stages: the unpruned network is trained as a supernet with the sandwich rule (largest,
smallest and two random widths each step, the others distilled from the largest); then weights keep training
that way while the alphas learn from the task loss of the network whose every channel is scaled by its
marginal probability plus a FLOPs loss (log-L1 between the expected FLOPs, computed from the expected channel
counts of consecutive layers, and the target). The width of each layer is its expected channel count rounded to
the step grid; the pruned network is cut and (paper) retrained from scratch.

Here the supernet is the shared slimmable block (:mod:`prunekit.train.slimmable`: one traced model at any
per-group width, no copy; coupled channels, such as a residual stream, share one chain) and the expected FLOPs
are the engine's own cost model with every channel kept with its marginal probability
(:func:`prunekit.graph.expected_cost.expected_cost`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data import first_batches
from ..graph.expected_cost import expected_cost
from ..train import Callback, fit
from ..train.config import method_train_config
from ..train.loop import output_logits
from ..train.slimmable import SandwichRule, Slimmable, SlimmableNet, WidthSampler, ratio_grid
from ..train.subnet_eval import recalibrate_bn
from ._config import MethodConfig, option
from ._filter_common import require_prune_epochs
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["DMCPConfig", "MarkovWidths", "markov_marginals", "run"]


@dataclass(frozen=True)
class DMCPConfig(MethodConfig):
    min_width: float = option(0.1, gt=0, le=1)  # fixed minimum part of each layer (reference yaml: min_width 0.1)
    offset: float = option(0.1, gt=0, le=1)  # width of one Markov step (reference yaml: offset 0.1)
    stage1_share: float = option(0.6, ge=0, lt=1)  # share of prune_epochs for the supernet stage (entry's check:
    # 3 supernet + 2 DMCP epochs); the rest (at least one epoch) is the DMCP stage
    n_random: int = option(2, ge=0)  # random widths per step besides the largest and smallest (sandwich, sec. 3.3)
    distill: bool = True  # in-place distillation from the largest width (sec. 3.3, "variant sandwich rule")
    flops_weight: float = option(0.1, ge=0)  # weight of the FLOPs loss (entry: 0.1)
    arch_lr: float = option(0.05, gt=0)  # ours: Adam step of the alphas (the reference's value was not checked)
    alpha_init: float = 3.0  # ours: initial alpha (transition probability sigmoid(3) = 0.95); not checked
    recal_batches: int = option(5, ge=0)  # BN recalibration batches before a sub-net is used (entry: 5)
    reinit: bool = True  # retrain the found widths from scratch (paper, sec. 4); False keeps the supernet weights
    meet_target: bool = True  # ours, reported: step the rounded widths down the grid until the cut meets the target


def markov_marginals(alpha: torch.Tensor) -> torch.Tensor:
    """Marginal keep probability of each step of the chain: ``cumprod(sigmoid(alpha))``.

    Example:
        >>> [round(v, 4) for v in markov_marginals(torch.tensor([0.0, 0.0, 2.0])).tolist()]
        [0.5, 0.25, 0.2202]
    """
    return torch.cumprod(torch.sigmoid(alpha), dim=-1)


class MarkovWidths:
    """One Markov chain per slimmable group: cut points on the grid, alphas, marginals, expected widths."""

    def __init__(self, sampler: WidthSampler, alpha_init: float):
        self.cuts = [np.asarray(c) for c in sampler.choices]  # b_0 < b_1 < ... < b_K = width
        self.alphas = [torch.full((len(c) - 1,), float(alpha_init), dtype=torch.float64, requires_grad=True)
                       for c in self.cuts]

    def marginals(self) -> list:
        return [markov_marginals(a) for a in self.alphas]

    def channel_keep(self) -> list:
        """Per group, the keep probability of each channel in keep order (1 for the minimum part)."""
        out = []
        for cuts, marg in zip(self.cuts, self.marginals()):
            sizes = torch.as_tensor(np.diff(cuts))
            parts = [marg.new_ones(int(cuts[0])), torch.repeat_interleave(marg, sizes)]
            out.append(torch.cat(parts))
        return out

    def expected_widths(self) -> list:
        """``E[c] = b_0 + sum_k (b_k - b_{k-1}) * marginal_k`` per group."""
        return [float(c[0] + (torch.as_tensor(np.diff(c), dtype=torch.float64) * m.detach()).sum())
                for c, m in zip(self.cuts, self.marginals())]

    def entropy(self) -> float:
        """Mean entropy (nats) of the width distributions ``P(width = b_k) = marginal_k - marginal_{k+1}``."""
        ents = []
        for m in self.marginals():
            m = m.detach()
            full = torch.cat([m.new_ones(1), m, m.new_zeros(1)])
            p = (full[:-1] - full[1:]).clamp_min(1e-12)
            ents.append(float(-(p * p.log()).sum()))
        return float(np.mean(ents)) if ents else 0.0


class ArchStep(Callback):
    """DMCP's alpha step after each weight step: task loss of the marginal-scaled network + FLOPs loss."""

    def __init__(self, slim: Slimmable, chains: MarkovWidths, kind: str, target: float, cfg: DMCPConfig):
        self.slim, self.chains, self.kind, self.target, self.cfg = slim, chains, kind, target, cfg
        self.opt = torch.optim.Adam(chains.alphas, lr=cfg.arch_lr)
        self.dense = float(slim.graph.macs() if kind == "macs" else slim.graph.params())
        self.steps = 0

    def expected(self) -> torch.Tensor:
        flat = self.slim.soft_keep(self.chains.channel_keep())
        keep = {g.id: flat[o:o + g.width] for g, o in zip(self.slim.graph.groups, self.slim.offsets)}
        return expected_cost(self.slim.graph, keep, self.kind) / self.dense

    def on_after_step(self, state) -> None:
        flat = self.slim.soft_keep(self.chains.channel_keep())
        out = output_logits(self.slim.forward(state.inputs, keep=flat.float()))
        loss = F.cross_entropy(out.float(), state.targets)
        loss = loss + self.cfg.flops_weight * (torch.log(self.expected()) - math.log(self.target)).abs()
        grads = torch.autograd.grad(loss, self.chains.alphas)
        for a, g in zip(self.chains.alphas, grads):
            a.grad = g
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.steps += 1


def _engaged(t: dict) -> bool:
    return t["alpha_steps"] >= 1 and t["cost_gap_start"] - t["cost_gap_end"] >= 0.01  # a point closer to the target


@register_method("dmcp", config=DMCPConfig, kind="structured", needs=("train",), status="partial",
                 left_out="the entry's check (c), the retrained searched net against uniform widths at equal "
                          "epochs over 3 seeds, is not run; the alphas' initial value and learning rate are ours "
                          "(the reference configs were not checked)",
                 smoke={"recal_batches": 1, "n_random": 1},
                 telemetry=Telemetry(
                     keys=("alpha_steps", "expected_cost_start", "expected_cost", "cost_gap_start", "cost_gap_end",
                           "entropy_start", "entropy_end", "cut_cost", "steps_to_target"),
                     engaged=_engaged,
                     what="the Markov width distributions moving the expected cost at least 0.01 toward the target",
                     knob="raise prune_epochs (the DMCP stage is the last 1 - options.stage1_share of them) or "
                          "options.arch_lr"))
def run(ctx: RunContext, cfg: DMCPConfig) -> MethodResult:
    require_prune_epochs(ctx, "dmcp")
    model, kind, target = ctx.model, ctx.target_kind, ctx.target_value
    slim = Slimmable(model, ctx.example_inputs, ignore=ctx.ignore)
    grid = ratio_grid(cfg.min_width, 1.0, cfg.offset) if cfg.min_width < 1 else (1.0,)
    sampler = WidthSampler(slim.space, grid=grid)
    chains = MarkovWidths(sampler, cfg.alpha_init)
    net = SlimmableNet(slim)
    stage2 = max(1, ctx.prune_epochs - int(round(ctx.prune_epochs * cfg.stage1_share)))
    stage1 = max(0, ctx.prune_epochs - stage2)
    sandwich = SandwichRule(net, sampler, n=cfg.n_random, distill=cfg.distill, seed=ctx.seed)
    if stage1:  # stage 1: the supernet
        fit(net, ctx.train_data, method_train_config(ctx, stage1), callbacks=[sandwich])
    arch = ArchStep(slim, chains, kind, target, cfg)
    with torch.no_grad():
        start_cost, start_entropy = float(arch.expected()), chains.entropy()
    fit(net, ctx.train_data, method_train_config(ctx, stage2), callbacks=[sandwich, arch])  # stage 2
    with torch.no_grad():
        end_cost = float(arch.expected())
    expected = chains.expected_widths()
    widths = list(sampler.snap(expected))
    steps = 0
    while cfg.meet_target and slim.cost(widths, kind) > target + 1e-12:  # ours: down the grid to the target
        over = [(w - e) / W if sampler.choices[i].index(w) > 0 else -np.inf
                for i, (w, e, W) in enumerate(zip(widths, expected, slim.space.widths))]
        i = int(np.argmax(over))
        if over[i] == -np.inf:
            break
        widths[i] = sampler.choices[i][sampler.choices[i].index(widths[i]) - 1]
        steps += 1
    cut_cost = slim.cost(widths, kind)
    report = slim.cut_(widths)
    if cfg.reinit:  # the paper retrains the found architecture from scratch
        for m in model.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    elif cfg.recal_batches:
        recalibrate_bn(model, first_batches(ctx.train_data, cfg.recal_batches), ctx.device)
    telemetry = {"alpha_steps": arch.steps, "expected_cost_start": start_cost, "expected_cost": end_cost,
                 "cost_gap_start": abs(start_cost - target), "cost_gap_end": abs(end_cost - target),
                 "entropy_start": start_entropy, "entropy_end": chains.entropy(), "cut_cost": cut_cost,
                 "steps_to_target": steps}
    info = {"widths": dict(zip(slim.names, map(int, widths))), "expected_widths": dict(zip(slim.names, expected)),
            "marginals": {n: [round(float(v), 4) for v in m.detach()] for n, m in zip(slim.names, chains.marginals())},
            "stage_epochs": [stage1, stage2], "sandwich_steps": sandwich.steps, "engine_report": report.to_dict()}
    log.info("dmcp: expected %s %.4f -> %.4f (target %.4f), cut at %.4f", kind, start_cost, end_cost, target, cut_cost)
    return MethodResult(model=model, info=info, telemetry=telemetry)
