"""TAS: network pruning as a search over the width of every layer, then distillation into the found shape.

Paper: Xuanyi Dong, Yi Yang, "Network Pruning via Transformable Architecture Search", NeurIPS 2019.
https://arxiv.org/abs/1905.09717 (reference code: D-X-Y/AutoDL-Projects, read to understand, not copied).

TAS does not pick which filters to keep; it learns how many. Every layer gets a learnable distribution over
candidate widths (0.3, 0.4, ..., 1.0 of its channels). In each step the distribution is perturbed with Gumbel
noise, two widths are drawn from it, the layer's output is cut to both, the narrower one is stretched to the
wider one by channel-wise interpolation (CWI: average pooling along the channel axis) and the two are summed
with their renormalised sampled weights, so the loss is differentiable in the distributions. Weights and
distributions are trained in turns on two halves of the training data; the distributions' loss adds a FLOPs
term: ``log E[F]`` when the most likely configuration is above the budget, ``-log E[F]`` when it is below the
budget minus a tolerance, nothing inside the window, where ``E[F]`` counts the expected channels. The most
likely width of every layer defines the pruned network, which is trained from scratch with knowledge
distillation from the unpruned one.

Here: one distribution per prunable channel group of the engine (channels a residual add ties share one, as
the coupled widths must), built on :mod:`prunekit.train.relaxed_widths` (the Gumbel two-candidate sample, CWI,
the prefix view, the expected MACs of the engine's cost model); the sampled mix is applied to the output of
each group's BatchNorms (or producing convolutions) by a forward hook, before the ReLU as in the paper. The
weights train through :func:`prunekit.train.fit` on even batches, the distributions by Adam on odd batches in a
callback. The argmax widths are cut physically (the first channels of every group: the prefix the search
trained), the network is re-initialised (``inherit=False``, the paper) and trained ``kd_epochs`` with the
loop's distillation loss from a frozen copy of the model as given. Left out: the depth search, one BatchNorm
per candidate width (the paper's supernet has them; here the candidates share the layer's BN), bottleneck and
DenseNet supernets.

Telemetry: the mean entropy of the width distributions before and after the search (``log 8`` = 2.079 when
uniform), the largest total-variation distance a group's distribution moved from its uniform start, the
distribution steps taken, the steps where the FLOPs term was active, and the argmax configuration's MACs
fraction. Engaged when some distribution moved by at least 0.001 (with ``arch_lr`` near 0 it stays uniform).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..train import fit
from ..train.callbacks import Callback
from ..train.config import method_train_config
from ..train.loop import output_logits
from ..train.relaxed_widths import TAS_RATIOS, DataHalves, RelaxedWidths, channel_wise_interpolation, tau_schedule
from ._config import MethodConfig, option
from ._filter_common import _graph, filter_groups, reinitialise_, require_prune_epochs
from ._registry import MethodResult, RunContext, Telemetry, register_method
from ._soft_masks import step_generator
from ..api import plan_channels, prune_

log = logging.getLogger(__name__)

__all__ = ["TASConfig", "run", "tas_mix", "tas_cost_loss"]


@dataclass(frozen=True)
class TASConfig(MethodConfig):
    ratios: tuple[float, ...] = TAS_RATIOS  # candidate widths as fractions of each layer (paper sec. 4.1: 0.3 .. 1.0)
    tau_max: float = option(5.0, gt=0)  # Gumbel-softmax temperature at the first search epoch (paper sec. 4.1)
    tau_min: float = option(0.1, gt=0)  # ... annealed linearly to this at the last epoch (paper sec. 4.1)
    cost_weight: float = option(2.0, ge=0)  # lambda_cost of the FLOPs loss (scripts-search/search-shape-cifar.sh)
    tolerance: float = option(0.05, ge=0, lt=1)  # FLOPs window below the target, fraction of the dense FLOPs
    # (search-shape-cifar.sh: 0.05)
    arch_lr: float = option(1e-3, gt=0)  # Adam step of the width distributions (configs/search-opts: arch_LR)
    arch_weight_decay: float = option(1e-3, ge=0)  # their weight decay (configs/search-opts: arch_weight_decay)
    inherit: bool = False  # False: the searched shape is trained from scratch (paper sec. 3.3); True: keep the
    # searched prefix weights (ours)
    kd_epochs: int = option(3, ge=0)  # epochs of distillation into the cut net (paper: 300, released scripts;
    # 3 = the entry's scaled check)
    kd_alpha: float = option(0.9, ge=0, le=1)  # weight of the distillation term (simple_KD_main / scripts: 0.9)
    kd_temperature: float = option(4.0, gt=0)  # its softmax temperature (scripts: 4)


def tas_mix(out: torch.Tensor, widths: list[int], weights: torch.Tensor) -> torch.Tensor:
    """TAS's mix of one layer's output ``out`` (N, C, ...) at the sampled ``widths``: each prefix ``out[:, :w]``
    is stretched to the widest sampled width by CWI, weighted, summed, and zero-padded back to ``C`` channels
    (the channels the next layer does not read)."""
    hi = max(widths)
    mixed = sum(channel_wise_interpolation(out[:, :w], hi) * weights[k] for k, w in enumerate(widths))
    if hi == out.shape[1]:
        return mixed
    pad = out.new_zeros((out.shape[0], out.shape[1] - hi, *out.shape[2:]))
    return torch.cat([mixed, pad], 1)


def tas_cost_loss(expected: torch.Tensor, current: float, target: float, tolerance: float) -> torch.Tensor:
    """TAS's FLOPs loss (fractions of the dense FLOPs): ``log E[F]`` when the argmax configuration's ``current``
    FLOPs exceed ``target``, ``-log E[F]`` when they are below ``target - tolerance``, else 0 (no gradient)."""
    if current > target:
        return torch.log(expected)
    if current < target - tolerance:
        return -torch.log(expected)
    return expected.detach().new_zeros(())


@register_method(
    "tas", config=TASConfig, kind="structured", needs=("train",), status="partial",
    targets=("macs",), targets_why="its cost loss prices FLOPs",
    left_out=("the depth search over blocks per stage; one BatchNorm per candidate width (the candidates share the "
              "layer's BN); bottleneck/DenseNet supernets; the 300-epoch distillation (kd_epochs)"),
    smoke={"kd_epochs": 0, "arch_lr": 0.05},
    telemetry=Telemetry(
        keys=("entropy_start", "entropy_end", "distribution_shift", "arch_steps", "cost_active_steps",
              "argmax_macs_fraction"),
        engaged=lambda t: t["arch_steps"] > 0 and t["distribution_shift"] >= 1e-3,
        what="the width distributions learning (moving from uniform)",
        knob="raise prune_epochs (search epochs) or options.arch_lr"))
def run(ctx: RunContext, cfg: TASConfig) -> MethodResult:
    require_prune_epochs(ctx, "tas")
    if cfg.tau_min > cfg.tau_max:
        raise ConfigError(f"tau_min={cfg.tau_min} > tau_max={cfg.tau_max}: the temperature is annealed down; "
                          f"give tau_min <= tau_max")
    model = ctx.model
    graph = _graph(model, ctx)
    groups = [g for g in filter_groups(model, ctx, graph) if g.bns or g.convs]
    dev = next(model.parameters()).device
    rw = RelaxedWidths(graph, {g.group.id: g.width for g in groups}, cfg.ratios, device=dev)
    dense, target = float(graph.macs()), ctx.target_value
    smallest = rw.exact_cost({gid: int(d.candidates[0]) for gid, d in rw.dists.items()}) / dense
    if smallest > target:
        raise ConfigError(f"target={ctx.target!r}: the narrowest candidates (ratios={list(cfg.ratios)}) keep "
                          f"{smallest:.3f} of the MACs; give smaller ratios or a larger target")
    teacher = copy.deepcopy(model).eval() if cfg.kd_epochs and cfg.kd_alpha > 0 else None
    mods = dict(model.named_modules())
    owner = {f: g.group.id for g in groups for f in (g.bns or g.convs)}
    sample: dict[int, tuple[list[int], torch.Tensor]] = {}
    tau = {"now": cfg.tau_max}

    def resample(step: int) -> None:
        gen = step_generator(ctx.seed, step)
        for gid, d in rw.dists.items():
            idx, w = d.sample_two(tau["now"], generator=gen)
            sample[gid] = ([int(d.candidates[i]) for i in idx], w)

    def hook_for(fqn: str):
        def hook(_mod, _inp, out):
            widths, w = sample[owner[fqn]]
            return tas_mix(out, widths, w.to(out))
        return hook

    arch_opt = torch.optim.Adam(rw.parameters(), lr=cfg.arch_lr, weight_decay=cfg.arch_weight_decay)
    halves = DataHalves(ctx.train_data)
    entropy_start, start = rw.entropy().item(), {gid: d.probs().detach().clone() for gid, d in rw.dists.items()}
    track = {"arch": 0, "active": 0}

    def flop_loss() -> torch.Tensor:
        return tas_cost_loss(rw.expected_cost("macs") / dense, rw.exact_cost(rw.argmax_widths()) / dense, target,
                             cfg.tolerance)

    class _Search(Callback):
        def state_dict(self) -> dict:  # what a resumed run needs: the distributions and their optimizer
            return {"logits": [d.logits.detach().clone() for d in rw.dists.values()],
                    "arch_opt": arch_opt.state_dict(), "track": dict(track)}

        def load_state_dict(self, sd: dict) -> None:
            with torch.no_grad():
                for d, t in zip(rw.dists.values(), sd["logits"]):
                    d.logits.copy_(t)
            arch_opt.load_state_dict(sd["arch_opt"])
            track.update(sd["track"])

        def on_epoch_start(self, state) -> None:
            tau["now"] = tau_schedule(state.epoch, state.config.epochs, cfg.tau_max, cfg.tau_min)

        def on_batch_start(self, state) -> None:
            resample(2 * state.step)

        def on_after_step(self, state) -> None:  # the distributions' step on the other half of the data
            if not halves.arch:
                return
            x, y = halves.arch.popleft()
            x, y = x.to(dev), y.to(dev)
            resample(2 * state.step + 1)
            loss = F.cross_entropy(output_logits(model(x)), y)
            cost = flop_loss()
            if cost.requires_grad:
                track["active"] += 1
            params = rw.parameters()
            grads = torch.autograd.grad(loss + cfg.cost_weight * cost.float(), params, allow_unused=True)
            for p, g in zip(params, grads):
                p.grad = None if g is None else g.detach()
            arch_opt.step()
            arch_opt.zero_grad(set_to_none=True)
            track["arch"] += 1

    handles = [mods[f].register_forward_hook(hook_for(f)) for f in owner]
    try:
        fit(model, halves, method_train_config(ctx), callbacks=[_Search()])
    finally:
        for h in handles:
            h.remove()
    widths = rw.argmax_widths()
    searched = rw.exact_cost(widths) / dense
    widths, topped = _top_up(rw, widths, target * dense)
    key = {g.group.id: g.key for g in groups}
    removal = {key[gid]: list(range(w, rw.dists[gid].width)) for gid, w in widths.items() if w < rw.dists[gid].width}
    report = prune_(model, plan_channels(model, ctx.example_inputs, removal, ignore=list(ctx.ignore))).to_dict()
    if not cfg.inherit:
        reinitialise_(model)
    kd_steps = 0
    if cfg.kd_epochs:
        kd = {"kd_alpha": cfg.kd_alpha, "kd_temperature": cfg.kd_temperature} if teacher is not None else {}
        kd_steps = fit(model, ctx.train_data, method_train_config(ctx, epochs=cfg.kd_epochs, **kd),
                       teacher=teacher).steps
    after = float(_graph(model, ctx).macs())
    shift = max(0.5 * float((d.probs().detach() - start[gid]).abs().sum()) for gid, d in rw.dists.items())
    telemetry = {"entropy_start": entropy_start, "entropy_end": rw.entropy().item(), "distribution_shift": shift,
                 "arch_steps": track["arch"],
                 "cost_active_steps": track["active"], "argmax_macs_fraction": searched}
    log.info("tas: argmax widths keep %.3f of the MACs (target %.3f), entropy %.3f -> %.3f", searched, target,
             telemetry["entropy_start"], telemetry["entropy_end"])
    return MethodResult(model=model, telemetry=telemetry, info={
        "target": ctx.target, "kept_macs_fraction": after / dense, "topped_up_steps": topped,
        "widths": {key[gid]: int(w) for gid, w in widths.items()},
        "distributions": {key[gid]: [round(float(p), 4) for p in d.probs().detach()] for gid, d in rw.dists.items()},
        "kd_steps": kd_steps, "inherit": cfg.inherit, "engine_report": report})


def _top_up(rw: RelaxedWidths, widths: dict[int, int], budget: float) -> tuple[dict[int, int], int]:
    """Ours (reported as ``topped_up_steps``): while the argmax widths exceed the budget, lower by one candidate
    the group whose next narrower candidate the search found most likely."""
    widths, steps = dict(widths), 0
    while rw.exact_cost(widths) > budget:
        best, best_lp = None, -np.inf
        for gid, d in rw.dists.items():
            k = int((d.candidates == widths[gid]).nonzero()[0])
            if k == 0:
                continue
            lp = float(torch.log_softmax(d.logits.detach(), -1)[k - 1])
            if lp > best_lp:
                best, best_lp = gid, lp
        if best is None:
            break
        d = rw.dists[best]
        widths[best] = int(d.candidates[int((d.candidates == widths[best]).nonzero()[0]) - 1])
        steps += 1
    return widths, steps
