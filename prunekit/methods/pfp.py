"""PFP: sample filters by their empirical sensitivity, with one error bound shared by all layers.

Paper: Lucas Liebenwein, Cenk Baykal, Harry Lang, Dan Feldman, Daniela Rus, "Provable Filter Pruning for
Efficient Neural Networks", ICLR 2020. https://arxiv.org/abs/1911.07412 (reference code, read to understand:
github.com/lucaslie/torchprune, ``method/pfp`` and ``method/base_sens``).

PFP judges a filter by what the next layer does with it. On a few sample images it measures, for every
input channel of a layer, the largest share its contribution ever takes of an output unit's pre-activation
(the empirical sensitivity). Sampling channels with probability proportional to that share, and scaling each
kept channel by ``count / (m p)``, approximates the layer's output with relative error ``eps`` after
``m = K (6 + 2 eps) S / eps^2`` draws (``S``: the summed sensitivities times a log factor); the expected
number of distinct channels in ``m`` draws is the layer's new width. One ``eps`` is shared by every layer
and found by bisection so the pruned network meets the parameter/MAC budget, which makes the per-layer
widths non-uniform by themselves. Removing an input channel of a layer removes the filter producing it.
A deterministic variant keeps the highest-sensitivity channels instead; a hybrid keeps the channels whose
probability is at least ``1/m`` and samples the rest. The pruned network is then fine-tuned.

Here the sensitivities of a channel group are the maximum over every layer reading it, costs are the
engine's exact MACs/params, and the random variant draws until the allocated number of distinct channels
is reached (so the target is met exactly; the paper's ``m`` for that number is reported beside the draws).
A channel group shared by a residual sum is sampled but not re-weighted (the identity path reads it too).
Left out: iterative prune-retrain cycles (one cut, then the shared fine-tune).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..allocate import bisect_decreasing
from ..api import plan_channels, prune_
from ..criteria.collect import collect
from ..criteria.sampling import (draws_for_unique, empirical_sensitivity, expected_unique, importance_weights,
                                 log_term, sample_complexity, sample_until_unique, sampling_probabilities)
from ..data import first_examples
from ..errors import ConfigError
from ._config import MethodConfig, option
from ._filter_common import _graph, filter_groups
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["PFPConfig", "group_sensitivities", "widths_at", "run"]


@dataclass(frozen=True)
class PFPConfig(MethodConfig):
    variant: Literal["random", "deterministic", "hybrid"] = "random"  # sec. 3: importance sampling with
    # re-weighting; deterministic = top sensitivities, hybrid = top-probability channels kept, rest sampled
    # (authors' PFPNetRand / PFPNet / PFPNetTop)
    images: int = option(256, ge=1)  # sample images for the sensitivities (entry's check: 256)
    delta: float = option(1e-16, gt=0, lt=1)  # failure probability (authors' code: delta_failure = 1e-16)
    c: float = option(3.0, gt=0)  # constant of the log factor (authors' code: c_constant = 3)
    reweight: bool = True  # kept channels' slices x count / (m p) (sec. 3); False: the ablation


def _consumers(mods: dict, group) -> list:
    """``[(module fqn, member)]`` of the layers reading the group's channels through their weight's dim 1."""
    out = []
    for m in group.members:
        f = m.fqn.rpartition(".")[0]
        if m.role == "consumer" and m.fqn.endswith(".weight") and m.dim == 1 and f in mods:
            out.append((f, m))
    return out


def _supported(mod: nn.Module) -> bool:
    return isinstance(mod, nn.Linear) or (isinstance(mod, nn.Conv2d) and mod.groups == 1)


def group_sensitivities(model: nn.Module, groups: list, calib, c: float, delta: float) -> dict:
    """``{group key: (sensitivity [width], log factor)}`` of every group all of whose readers are Linear /
    Conv2d layers: per channel the maximum over the readers of their input channel's empirical sensitivity,
    and the largest reader's :func:`~prunekit.criteria.sampling.log_term`."""
    mods = dict(model.named_modules())
    readers = {fg.key: _consumers(mods, fg.group) for fg in groups}
    usable = {k: r for k, r in readers.items() if r and all(_supported(mods[f]) for f, _ in r)}
    fqns = sorted({f for r in usable.values() for f, _ in r})
    cal = collect(model, calib, inputs=fqns)
    cache, out = {}, {}
    for fg in groups:
        if fg.key not in usable:
            continue
        sens = torch.zeros(fg.width, dtype=torch.float64)
        factor = 0.0
        for f, member in usable[fg.key]:
            if f not in cache:
                cache[f] = empirical_sensitivity(mods[f], cal.inputs.get(f, []))
            s_in, positions = cache[f]
            ch = torch.as_tensor(member.channel, dtype=torch.long)
            live = ch >= 0
            # a Linear may read one channel through several features (a flatten): the max over them
            kernel = int(np.prod(mods[f].kernel_size)) if isinstance(mods[f], nn.Conv2d) else 1
            sens.scatter_reduce_(0, ch[live], s_in[live], reduce="amax")
            factor = max(factor, log_term(positions, kernel, delta, c))
        out[fg.key] = (sens, factor)
    return out


def widths_at(eps: float, table: dict, widths: dict) -> dict:
    """``{group key: kept width}`` at error ``eps``: the expected number of distinct channels in the sample
    complexity's ``m`` draws, at least 1 and at most the width."""
    out = {}
    for key, (sens, factor) in table.items():
        prob = sampling_probabilities(sens)
        m = sample_complexity(eps, float(sens.sum()) * factor)
        out[key] = int(min(widths[key], max(1, expected_unique(prob, m))))
    return out


def _select(prob: torch.Tensor, k: int, variant: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(kept channel indices, weight per channel, draws)`` for one group keeping ``k`` of its channels."""
    width = prob.numel()
    weight = torch.zeros(width, dtype=torch.float64)
    live = int((prob > 0).sum())
    if variant == "deterministic" or live <= k:
        order = torch.argsort(prob, descending=True, stable=True)[:k]
        weight[order] = 1.0
        return order.sort().values, weight, 0
    det = torch.zeros(0, dtype=torch.long)
    p = prob
    if variant == "hybrid":  # channels with p >= 1/m (m: draws for k distinct) are kept as they are
        m_adapt = draws_for_unique(prob, k)
        top = torch.nonzero(prob >= 1.0 / max(m_adapt, 1)).flatten()
        det = top[torch.argsort(prob[top], descending=True, stable=True)][:k]
        weight[det] = 1.0
        p = prob.clone()
        p[det] = 0
        p = p / p.sum() if float(p.sum()) > 0 else p
    rest = k - len(det)
    draws = 0
    if rest > 0 and float(p.sum()) > 0:
        counts, draws = sample_until_unique(p, rest, gen)
        w = importance_weights(counts, draws, p)
        weight = torch.where(w > 0, w, weight)
    kept = torch.nonzero(weight > 0).flatten()
    return kept, weight, draws


@register_method("pfp", config=PFPConfig, kind="structured", needs=("calib",), smoke={"images": 8},
                 status="partial", left_out=(
    "the paper's iterative prune-retrain cycles (one prune, then the caller's fine-tune); the random variant "
    "draws until the allocated number of distinct channels is reached (the target met exactly) where the "
    "paper draws its sample count once (reported as paper_draws)"),
                 telemetry=Telemetry(
                     keys=("epsilon", "groups_cut", "draws", "paper_draws", "unique", "groups_reweighted"),
                     engaged=lambda t: t["groups_cut"] >= 1 and math.isfinite(t["epsilon"]),
                     what="sensitivity sampling of filters to one error bound eps shared by every layer",
                     knob="no channel group was cut at the eps that meets the target: lower the target (a smaller "
                          "fraction kept) or give calibration images on which the channels differ"))
def run(ctx: RunContext, cfg: PFPConfig) -> MethodResult:
    model = ctx.model
    graph = _graph(model, ctx)
    groups = filter_groups(model, ctx, graph)
    images = first_examples(ctx.calib, cfg.images)
    table = group_sensitivities(model, groups, images, cfg.c, cfg.delta)
    if not table:
        raise ConfigError(f"method 'pfp': model={type(model).__name__} has no channel group read only by Linear / "
                          f"Conv2d layers; PFP samples the input channels of such layers")
    by_key = {fg.key: fg for fg in groups}
    widths = {k: by_key[k].width for k in table}
    probs = {k: sampling_probabilities(s) for k, (s, _) in table.items()}
    cost = graph.macs if ctx.target_kind == "macs" else graph.params
    budget = math.floor(cost() * ctx.target_value)

    def cost_of(kept: dict) -> int:  # any choice of the kept channels costs the same
        removal = {by_key[k].group.id: torch.argsort(probs[k], stable=True)[:widths[k] - n].numpy()
                   for k, n in kept.items() if n < widths[k]}
        return cost(graph.removed_flat(removal))

    try:  # the smallest eps (the largest network) within the budget (authors' bounds: 1e-300 .. 1e150)
        eps = bisect_decreasing(lambda e: cost_of(widths_at(e, table, widths)), budget, 1e-300, 1e150,
                                steps=200, log=True)
    except ConfigError as e:
        raise ConfigError(f"method 'pfp': target={ctx.target!r}: {e}; PFP prunes only groups read by Linear / "
                          f"Conv2d layers") from None
    kept_w = widths_at(eps, table, widths)
    gen = torch.Generator().manual_seed(ctx.seed)
    mods = dict(model.named_modules())
    removal, draws, paper_draws, unique, reweighted, kept_idx = {}, 0, 0, 0, 0, {}
    for key, k in kept_w.items():
        if k >= widths[key]:
            continue
        chosen, weight, m = _select(probs[key], k, cfg.variant, gen)
        fg = by_key[key]
        removal[key] = sorted(set(range(fg.width)) - set(chosen.tolist()))
        kept_idx[key] = chosen.tolist()
        draws += m
        paper_draws += draws_for_unique(probs[key], k) if m else 0
        unique += len(chosen)
        if cfg.reweight and cfg.variant != "deterministic" and len(fg.convs) == 1 and bool((weight[chosen] != 1).any()):
            reweighted += 1
            with torch.no_grad():
                for f, member in _consumers(mods, fg.group):
                    ch = torch.as_tensor(member.channel, dtype=torch.long)
                    scale = torch.ones(ch.numel(), dtype=torch.float64)
                    scale[ch >= 0] = torch.where(weight[ch[ch >= 0]] > 0, weight[ch[ch >= 0]], 1.0)
                    w = mods[f].weight
                    w.mul_(scale.to(w).reshape([1, -1] + [1] * (w.dim() - 2)))
    report = None
    if removal:
        report = prune_(model, plan_channels(model, ctx.example_inputs, removal, ignore=list(ctx.ignore)))
    telemetry = {"epsilon": float(eps), "groups_cut": len(removal), "draws": draws, "paper_draws": paper_draws,
                 "unique": unique, "groups_reweighted": reweighted}
    info = {"variant": cfg.variant, "widths": {k: kept_w[k] for k in kept_w}, "dense_widths": widths, "kept": kept_idx,
            "budget": budget, "cost_after": cost_of(kept_w), "engine_report": report.to_dict() if report else None}
    log.info("pfp: eps=%.4g, %d groups cut, %d draws", eps, len(removal), draws)
    return MethodResult(model=model, info=info, telemetry=telemetry)
