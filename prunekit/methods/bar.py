"""BAR: budget-aware regularisation — L0 channel gates, a barrier on the resource, distillation from the dense net.

Paper: Carl Lemaire, Andrew Achkar, Pierre-Marc Jodoin, "Structured Pruning of Neural Networks with Budget-Aware
Regularization", CVPR 2019. https://arxiv.org/abs/1811.09332 (no reference code was found).

Sparsity priors with learnable dropout gates prune well, but the size of the result cannot be asked for: it
falls out of a penalty weight. BAR gives every feature map a learnable Hard-Concrete gate (the L0 relaxation of
Louizos et al.), measures the resource ``V`` of the gated network from the gates' probabilities of being open,
and weights the sparsity loss by a *barrier* of ``V`` against the budget ``b``: far below the budget the push
is weak and the network keeps what it needs, near the budget it grows without bound, so training stays under
it. The budget is lowered progressively during training, from the dense resource to the user's budget, and the
pruned network is trained against the unpruned one by knowledge distillation. Gates that end closed are removed.

Here the gates are :class:`~prunekit.methods._soft_masks.HardConcrete` on every prunable channel group (one gate
per channel, shared by the BNs a residual add ties; the paper's mixed-connectivity block for ResNets is not
built), ``V`` is the expected MACs of the gated network from the engine's cost model
(:func:`prunekit.graph.expected_cost.expected_cost`; the paper's main resource is the activation volume, which
the target syntax does not name), the barrier is :func:`prunekit.train.barrier.log_barrier`, the loss is the
loop's distillation loss from a frozen copy of the dense model plus ``strength * barrier(V, b_t) * V / V_dense``,
and ``b_t`` falls along :func:`prunekit.train.barrier.progressive_budget`. At the end the deterministic gates are
folded into the BN (or conv) outputs and the closed ones cut through the engine; if the open gates exceed the
target, the least open channels go too (reported in ``info["topped_up"]``).

Telemetry: the barrier value and the budget margin ``1 - V / b_t`` at each epoch end, the steps after the ramp
where ``V`` exceeded the budget, and the gates closed before the cut. Engaged when gates closed.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch

from ..graph.expected_cost import expected_cost
from ..train import fit
from ..train.barrier import log_barrier, progressive_budget
from ..train.config import method_train_config
from ._config import MethodConfig, option
from ._filter_common import _graph, cut_to_target, filter_groups, require_prune_epochs, steps_per_epoch
from ._registry import MethodResult, RunContext, Telemetry, register_method
from ._soft_masks import ChannelMaskHooks, HardConcrete, MaskTraining, group_keep, logistic_noise, step_generator

log = logging.getLogger(__name__)

__all__ = ["BARConfig", "run"]


@dataclass(frozen=True)
class BARConfig(MethodConfig):
    strength: float = option(1.0, gt=0)  # lambda, weight of the barrier-weighted sparsity loss (ours: not found)
    budget_ramp: float = option(0.5, gt=0, le=1)  # share of the steps over which the budget falls to the target
    # (the paper lowers it progressively; the schedule's form was not found: ours, an S-curve)
    kd_alpha: float = option(0.5, ge=0, le=1)  # weight of the distillation term from the dense model (paper: KD
    # loss; its weighting was not found: ours); 0 = no distillation (ablation)
    kd_temperature: float = option(4.0, gt=0)  # softmax temperature of the distillation (Hinton et al. 2015; ours)
    init_log_alpha: float = option(3.0)  # gates start open (P(z != 0) = 0.99) on a trained net (ours)
    gate_lr: float = option(0.2, gt=0)  # Adam step of the gate parameters (ours: closes gates within the bench's
    # 2-epoch budget, docs/methods-filter-11.md)
    barrier: bool = True  # False: ablation, plain L0 (the sparsity loss without the barrier, the paper's baseline)


@register_method(
    "bar", config=BARConfig, kind="structured", needs=("train",), status="partial",
    targets=("macs",), targets_why="its barrier prices the gated network's MACs",
    left_out=("the mixed-connectivity block for residual networks (gates are shared by the channels a residual "
              "add ties); the resource is the expected MACs, not the paper's activation volume; lambda, the "
              "budget schedule and the distillation weighting are ours (not found)"),
    telemetry=Telemetry(
        keys=("barrier", "budget_margin", "over_budget_steps", "closed_gates"),
        engaged=lambda t: t["closed_gates"] > 0,
        what="the barrier-weighted L0 gates closing channels under the budget",
        knob="raise prune_epochs (the budget falls over options.budget_ramp of the steps) or options.gate_lr"))
def run(ctx: RunContext, cfg: BARConfig) -> MethodResult:
    require_prune_epochs(ctx, "bar")
    model = ctx.model
    graph = _graph(model, ctx)
    groups = [g for g in filter_groups(model, ctx, graph) if g.bns or g.convs]
    mods = dict(model.named_modules())
    teacher = copy.deepcopy(model).eval() if cfg.kd_alpha > 0 else None
    gates = {g.key: HardConcrete(torch.full((g.width,), cfg.init_log_alpha, device=next(model.parameters()).device))
             for g in groups}
    owner = {f: g.key for g in groups for f in (g.bns or g.convs)}
    noise: dict[str, torch.Tensor] = {}

    def resample(step: int) -> None:
        gen = step_generator(ctx.seed, step)
        for g in groups:
            noise[g.key] = logistic_noise((g.width,), gen)

    def mask(fqn: str, training: bool) -> torch.Tensor:
        gate = gates[owner[fqn]]
        return gate.sample(noise[owner[fqn]]) if training and owner[fqn] in noise else gate.deterministic()

    dense = float(graph.macs())
    total = max(ctx.prune_epochs * steps_per_epoch(ctx.train_data), 1)
    budget = ctx.target_value * dense
    track = {"step": 0, "barrier": 0.0, "margin": 0.0, "over": 0}

    def penalty(state) -> torch.Tensor:
        v = expected_cost(graph, group_keep(groups, {k: g.prob_nonzero() for k, g in gates.items()}))
        b = progressive_budget(track["step"], total, dense, budget, cfg.budget_ramp)
        f = log_barrier(v, b) if cfg.barrier else torch.ones((), dtype=v.dtype)
        track.update(barrier=f.item(), margin=1 - v.item() / b)
        if track["step"] >= cfg.budget_ramp * total and v.item() > budget:
            track["over"] += 1
        return (cfg.strength * f * v / dense).float()

    history = {"barrier": [], "budget_margin": []}

    def after_step(_state) -> None:
        track["step"] += 1

    class _Epochs(MaskTraining):
        def on_epoch_end(self, state) -> None:
            history["barrier"].append(track["barrier"])
            history["budget_margin"].append(track["margin"])

    hooks = ChannelMaskHooks({f: mods[f] for f in owner}, mask)
    try:
        train_cfg = method_train_config(ctx, kd_alpha=cfg.kd_alpha, kd_temperature=cfg.kd_temperature)
        fit(model, ctx.train_data, train_cfg, teacher=teacher,
            callbacks=[_Epochs(resample, penalty, [g.log_alpha for g in gates.values()], cfg.gate_lr, after_step)])
    finally:
        hooks.remove()
    z = {k: g.deterministic().detach() for k, g in gates.items()}
    closed = sum(int((v == 0).sum()) for v in z.values())
    gated_macs = float(expected_cost(graph, group_keep(groups, {k: (v > 0).double() for k, v in z.items()})))
    with torch.no_grad():  # fold the gates into the masked outputs: the plain model computes the gated one
        for f, key in owner.items():
            m, g = mods[f], z[key]
            shape = [-1] + [1] * (m.weight.dim() - 1)
            m.weight.mul_(g.to(m.weight).view(shape))
            if getattr(m, "bias", None) is not None:
                m.bias.mul_(g.to(m.bias))
    report = cut_to_target(model, ctx, {k: v.double().cpu() for k, v in z.items()}, allocation="global")
    telemetry = {"barrier": history["barrier"], "budget_margin": history["budget_margin"],
                 "over_budget_steps": track["over"], "closed_gates": closed}
    log.info("bar: %d gates closed, open gates keep %.3f of the MACs", closed, gated_macs / dense)
    return MethodResult(model=model, telemetry=telemetry, info={
        "gated_macs_fraction": gated_macs / dense, "open_gates": {k: int((v > 0).sum()) for k, v in z.items()},
        "topped_up": report["removed_channels"] > closed,
        "epochs_trained": ctx.prune_epochs, **report})
