"""Coreset neuron pruning: keep a weighted sample of each layer's neurons drawn by their sensitivity.

Paper: Ben Mussay, Margarita Osadchy, Vladimir Braverman, Samson Zhou, Dan Feldman, "Data-Independent Neural
Pruning via Coresets", ICLR 2020. https://arxiv.org/abs/1907.04018

A neuron of the next layer computes a weighted sum of the current layer's activations, sum_p w(p) phi(p.x), so
the current layer's neurons are weighted points and a small weighted subset of them -- a coreset -- can stand in
for the whole sum for every bounded input x. The sensitivity of a neuron (its largest possible share of the
sum) is bounded from the weights alone: its outgoing weight times the norm of its incoming weights (for a ReLU,
phi(beta ||p||) is proportional to ||p||). Neurons are sampled i.i.d. with probability proportional to this
bound, one probability shared by all neurons of the next layer (the maximum of their sensitivities), and each
kept neuron's outgoing weights are multiplied by (times drawn) / (draws x probability) so the sum stays
unbiased; the others are removed. No data and no fine-tuning are needed; layers are processed in order.

Here a layer's number of kept neurons comes from the structured target (the same fraction of every layer that
meets the MAC/parameter target; the paper sets the sample size from the error bound), and sampling goes on
until that many distinct neurons are drawn (ours: the paper draws a fixed m). Conv channels (the entry's
"closest generalisation") are treated the same way, the kernel slices taking the place of single weights; a
channel group shared by a residual sum is sampled but not re-weighted (its consumers do not see the whole sum).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..api import plan_channels, prune_
from ._config import MethodConfig
from ._filter_common import _graph, filter_groups, removal_counts
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["CoresetConfig", "sensitivities", "sample_coreset", "run"]


@dataclass(frozen=True)
class CoresetConfig(MethodConfig):
    sampling: Literal["sensitivity", "uniform"] = "sensitivity"  # Alg. 1: prob ~ sensitivity; uniform: the ablation
    combine: Literal["max", "sum"] = "max"  # sec. 4, coreset per layer: one probability for the next layer's neurons
    reweight: bool = True  # Alg. 1: kept neuron's outgoing weight x count / (m * prob); False: the ablation


def sensitivities(incoming: torch.Tensor, outgoing: torch.Tensor, combine: str = "max") -> torch.Tensor:
    """Sampling probabilities of the neurons of one layer from weights alone.

    ``incoming[p]`` is the norm of neuron p's incoming weights (bias included), ``outgoing[j, p]`` the magnitude of
    its weight into neuron j of the next layer. For every j, ``s_j(p) = |w_j(p)| ||p|| / sum_q |w_j(q)| ||q||``;
    the layer's ``s(p)`` combines them over j (``max`` or ``sum``) and the probability is ``s / sum(s)``.

    Example:
        >>> sensitivities(torch.tensor([1.0, 2.0, 1.0]), torch.tensor([[1.0, 1.0, 2.0], [0.0, 1.0, 3.0]]))
        tensor([0.1667, 0.3333, 0.5000])
    """
    share = outgoing.abs() * incoming[None, :]
    s = share / share.sum(1, keepdim=True).clamp_min(1e-30)
    s = s.amax(0) if combine == "max" else s.sum(0)
    return s / s.sum().clamp_min(1e-30)


def sample_coreset(prob: torch.Tensor, keep: int | None, generator: torch.Generator, *,
                   draws: int | None = None) -> tuple[torch.Tensor, int]:
    """Draw i.i.d. from ``prob`` until ``keep`` distinct neurons are drawn; ``(counts per neuron, draws m)``.

    With ``draws`` instead, exactly that many i.i.d. draws (the paper's Alg. 1 with its sample size m). A neuron
    of probability 0 is never drawn: ``keep`` is capped at the number of neurons with a positive probability."""
    width = prob.numel()
    if draws is not None:
        d = torch.multinomial(prob, draws, replacement=True, generator=generator)
        return torch.bincount(d, minlength=width), draws
    counts = torch.zeros(width, dtype=torch.long)
    live = int((prob > 0).sum())
    target = min(keep, live)
    m = 0
    while int((counts > 0).sum()) < target:
        draws = torch.multinomial(prob, 4 * width, replacement=True, generator=generator)
        for d in draws.tolist():
            counts[d] += 1
            m += 1
            if counts[d] == 1 and int((counts > 0).sum()) >= target:
                break
    return counts, m


def _consumers(model: nn.Module, group) -> list[tuple[nn.Module, object]]:
    mods = dict(model.named_modules())
    out = []
    for m in group.members:
        mod = mods.get(m.fqn.rpartition(".")[0])
        if (m.role == "consumer" and m.fqn.endswith(".weight") and m.dim == 1
                and isinstance(mod, (nn.Linear, nn.Conv2d))):
            out.append((mod, m))
    return out


def _incoming(mods: dict, fg) -> torch.Tensor:
    norm = torch.zeros(fg.width, dtype=torch.float64)
    for f in fg.convs:
        mod = mods[f]
        w = mod.weight.detach().reshape(mod.weight.shape[0], -1).double()
        if mod.bias is not None:
            w = torch.cat([w, mod.bias.detach().double()[:, None]], 1)
        norm += w.norm(dim=1).cpu()
    for f in fg.bns:  # a BatchNorm on the channels scales them by |gamma| / sigma
        bn = mods[f]
        norm *= (bn.weight.detach().abs() / (bn.running_var + bn.eps).sqrt()).double().cpu()
    return norm


def _outgoing(consumers, width: int) -> torch.Tensor:
    """``[next neurons, width]``: the norm of each consumer neuron's weights reading each channel."""
    rows = []
    for mod, member in consumers:
        w = mod.weight.detach().double().cpu().transpose(0, 1).reshape(mod.weight.shape[1], mod.weight.shape[0], -1)
        ch = torch.as_tensor(member.channel)
        per = torch.zeros(width, w.shape[1], dtype=torch.float64)
        keep = ch >= 0
        per.index_add_(0, ch[keep], w[keep].pow(2).sum(-1))
        rows.append(per.sqrt().T)
    return torch.cat(rows) if rows else torch.ones(1, width, dtype=torch.float64)


@register_method("coreset-neuron", config=CoresetConfig, kind="structured",
                 telemetry=Telemetry(
                     keys=("sampled", "kept", "groups_sampled", "groups_reweighted", "mean_factor"),
                     engaged=lambda t: t["groups_reweighted"] >= 1 and t["sampled"] >= t["kept"] > 0,
                     what="sensitivity sampling of neurons with the kept neurons' outgoing weights re-weighted",
                     knob="set options.reweight=true (the coreset's estimator needs the new outgoing weights); "
                          "a group shared by a residual sum is never re-weighted: prune a plain MLP/CNN"))
def run(ctx: RunContext, cfg: CoresetConfig) -> MethodResult:
    """Sample a coreset of every prunable layer's neurons, re-weight the next layer, remove the rest."""
    model = ctx.model
    graph = _graph(model, ctx)
    groups = filter_groups(model, ctx, graph)
    mods = dict(model.named_modules())
    consumers = {fg.key: _consumers(model, fg.group) for fg in groups}
    first = {fg.key: sensitivities(_incoming(mods, fg), _outgoing(consumers[fg.key], fg.width), cfg.combine)
             for fg in groups}
    counts = removal_counts(model, ctx, {k: v.float() for k, v in first.items()}, "uniform")
    gen = torch.Generator().manual_seed(ctx.seed)
    removal, kept_idx, sampled, kept, reweighted, factors = {}, {}, 0, 0, 0, []
    for fg in groups:  # in order: a layer's probabilities see the re-weighting of the layer before
        n_remove = counts.get(fg.key, 0)
        if not n_remove:
            continue
        cons = consumers[fg.key]
        prob = sensitivities(_incoming(mods, fg), _outgoing(cons, fg.width), cfg.combine)
        if cfg.sampling == "uniform":
            prob = torch.full_like(prob, 1.0 / fg.width)
        c, m = sample_coreset(prob, fg.width - n_remove, gen)
        chosen = torch.nonzero(c > 0).flatten()
        if chosen.numel() < fg.width - n_remove:  # fewer live neurons than places: fill in index order
            rest = [i for i in range(fg.width) if c[i] == 0][: fg.width - n_remove - chosen.numel()]
            chosen = torch.cat([chosen, torch.tensor(rest, dtype=torch.long)])
        gone = np.setdiff1d(np.arange(fg.width), chosen.numpy())
        removal[fg.key] = [int(i) for i in gone]
        kept_idx[fg.key] = sorted(int(i) for i in chosen)
        sampled, kept = sampled + m, kept + int(chosen.numel())
        factor = torch.where(c > 0, c.double() / (m * prob).clamp_min(1e-30), torch.ones_like(prob))
        # removed neurons: their readers' slices are zeroed before the cut, so the next layer's probabilities see
        # only the kept inputs; a residual group (several producers) is not re-weighted
        factor[torch.as_tensor(gone, dtype=torch.long)] = 0.0
        do_reweight = cfg.reweight and len(fg.convs) == 1
        with torch.no_grad():
            for mod, member in cons:
                ch = torch.as_tensor(member.channel)
                f = torch.ones(ch.numel(), dtype=torch.float64)
                live = ch >= 0
                f[live] = factor[ch[live]] if do_reweight else (factor[ch[live]] > 0).double()
                shape = [1, -1] + [1] * (mod.weight.dim() - 2)
                mod.weight.mul_(f.to(mod.weight).reshape(shape))
        if do_reweight:
            reweighted += 1
            factors.append(float(factor[chosen].mean()))
    report = None
    if removal:
        report = prune_(model, plan_channels(model, ctx.example_inputs, removal, ignore=list(ctx.ignore)))
    telemetry = {"sampled": sampled, "kept": kept, "groups_sampled": len(removal), "groups_reweighted": reweighted,
                 "mean_factor": float(np.mean(factors)) if factors else 1.0}
    return MethodResult(model=model, telemetry=telemetry,
                        info={"sampling": cfg.sampling, "combine": cfg.combine, "reweight": cfg.reweight,
                              "removed": {k: len(v) for k, v in removal.items()}, "kept": kept_idx,
                              "engine_report": report.to_dict() if report else None})
