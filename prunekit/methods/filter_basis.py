"""Filter basis: every k x k conv rewritten as a small basis shared by groups of its input channels, then trained.

Paper: Yawei Li, Shuhang Gu, Luc Van Gool, Radu Timofte, "Learning Filter Basis for Convolutional Neural
Network Compression", ICCV 2019. https://arxiv.org/abs/1908.08932 (reference code, read to understand:
github.com/ofsoundof/learning_filter_basis, ``model/resnet_basis.py``).

A conv with ``C_in`` inputs and ``C_out`` filters of size k x k holds ``C_out * C_in`` kernel slices. The paper
cuts the input channels into ``g = C_in / s`` groups of ``s`` channels and asks every slice of size ``s x k x k``
to be a combination of the *same* ``m`` basis filters: each group is convolved with the basis (``g * m`` maps)
and a 1x1 conv mixes the maps into the ``C_out`` outputs. That costs ``m s k^2 + g m C_out`` parameters instead
of ``C_out C_in k^2``; the split size ``s`` moves between a plain low-rank basis (``s = C_in``) and
depthwise-like schemes (small ``s``). The basis and the mixing weights are trained end to end from a pretrained
network. The decomposed layer is a real module (:class:`~prunekit.surgery.factorize.BasisConv`), saved and
loaded by :mod:`prunekit.io` and counted by the engine's MAC/parameter model.

Here the basis and the 1x1 weights start from the SVD of the conv's slices (the best rank-``m`` start: the
folded weight misses exactly the discarded singular values' energy) and are then trained for ``prune_epochs``
epochs with the task loss. Every conv with a kernel larger than 1x1 outside ``ignore`` is decomposed with the
split ``s`` nearest to ``split * C_in`` that divides ``C_in``; ``m`` is one fraction of every layer's full
rank, searched so the decomposed network meets the ``macs=``/``params=`` target (ours: the paper sets ``(s,
m)`` per stage by hand), and a layer whose basis form would not have fewer parameters keeps its conv. Left out:
basis sharing across layers (block-, group- and network-wise), the reference trainer's norm regulariser, the
super-resolution networks.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..allocate import bisect_decreasing
from ..errors import ConfigError
from ..measure import count_macs, count_params
from ..surgery.factorize import BasisConv, basis_cost, layer_cost
from ..train import fit
from ..train.config import method_train_config
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["FilterBasisConfig", "split_size", "basis_plan", "run"]


@dataclass(frozen=True)
class FilterBasisConfig(MethodConfig):
    split: float = option(0.5, gt=0, le=1)  # split size s as a fraction of C_in (entry's check: s = C/2, sec. 3)
    min_rank: int = option(1, ge=1)  # ours: fewest basis filters a decomposed layer keeps
    basis_fraction: float | None = option(None, gt=0, le=1)  # m = fraction x C_out set by hand (entry's check:
    # m = C/4; the paper sets it per stage); None: one fraction of the full rank searched to meet the target (ours)


def split_size(in_channels: int, fraction: float) -> int:
    """The divisor of ``in_channels`` nearest to ``fraction * in_channels`` (ties: the larger one).

    Example:
        >>> split_size(16, 0.5), split_size(12, 0.3), split_size(3, 0.5), split_size(1, 0.5)
        (8, 4, 1, 1)
    """
    want = fraction * in_channels
    divisors = [d for d in range(1, in_channels + 1) if in_channels % d == 0]
    return min(divisors, key=lambda d: (abs(d - want), -d))


def _convs(model: nn.Module, ignore) -> list[str]:
    out = []
    for n, m in model.named_modules():
        if not n or any(n == i or n.startswith(i + ".") for i in ignore):
            continue
        if (isinstance(m, nn.Conv2d) and m.groups == 1 and not isinstance(m.padding, str)
                and m.padding_mode == "zeros" and m.weight[0, 0].numel() > 1):
            out.append(n)
    return out


def basis_plan(convs: dict, splits: dict, fraction: float, min_rank: int = 1, of_filters: bool = False) -> dict:
    """``{fqn: n_basis}`` at one rank ``fraction`` of every conv's full rank (``of_filters``: of its number of
    filters), for the convs whose basis form has fewer parameters than the conv (the others are left out)."""
    out = {}
    for n, conv in convs.items():
        full = BasisConv.max_rank(conv, splits[n])
        m = min(full, max(min_rank, math.ceil(fraction * (conv.out_channels if of_filters else full))))
        if basis_cost(conv, splits[n], m)[0] < layer_cost(conv)[0]:
            out[n] = m
    return out


@register_method(
    "filter-basis", config=FilterBasisConfig, kind="structured", needs=("train",), status="partial", left_out=(
        "basis sharing across layers (block-, group- and network-wise: one basis per conv here), the reference "
        "trainer's norm regulariser, the super-resolution networks; the per-stage (s, m) of the paper are replaced "
        "by one split fraction and one rank fraction searched to meet the target"),
    telemetry=Telemetry(
        keys=("layers_decomposed", "layers_considered", "rank_kept", "energy_kept", "train_steps",
              "basis_change"),
        engaged=lambda t: t["layers_decomposed"] >= 1,
        what="convs replaced by a shared filter basis and a 1x1 mix",
        knob="lower the target (macs= / params=) or options.split: at this budget no conv's basis form was "
             "smaller than the conv"))
def run(ctx: RunContext, cfg: FilterBasisConfig) -> MethodResult:
    """SVD-initialised basis forms sized to the target, swapped in, then trained end to end."""
    model = ctx.model
    names = _convs(model, ctx.ignore)
    if not names:
        raise ConfigError(f"model={type(model).__name__}: method 'filter-basis' found no nn.Conv2d with a k x k "
                          f"kernel (k > 1), groups=1 and zero padding outside ignore=[...]; it decomposes such convs")
    mods = dict(model.named_modules())
    convs = {n: mods[n] for n in names}
    splits = {n: split_size(c.in_channels, cfg.split) for n, c in convs.items()}
    mc = count_macs(model, ctx.example_inputs)
    dense_macs, dense_params = int(mc.total), count_params(model)
    positions = {n: mc.per_module.get(n, 0) // c.weight.numel() for n, c in convs.items()}

    def _cost(plan: dict) -> int:
        params, macs = dense_params, dense_macs
        for n, m in plan.items():
            p0, m0 = layer_cost(convs[n], positions[n])
            p1, m1 = basis_cost(convs[n], splits[n], m, positions[n])
            params, macs = params - p0 + p1, macs - m0 + m1
        return params if ctx.target_kind == "params" else macs

    def cost_at(x: float) -> int:  # x = 1 - rank fraction: the cost falls as x grows
        return _cost(basis_plan(convs, splits, 1.0 - x, cfg.min_rank))

    dense = dense_params if ctx.target_kind == "params" else dense_macs
    budget = ctx.target_value * dense
    if cfg.basis_fraction is not None:
        plan = basis_plan(convs, splits, cfg.basis_fraction, cfg.min_rank, of_filters=True)
        if _cost(plan) > budget:
            raise ConfigError(f"method 'filter-basis': options['basis_fraction']={cfg.basis_fraction} keeps "
                              f"{_cost(plan) / dense:.3f} of the {ctx.target_kind}, more than "
                              f"target={ctx.target!r}; lower basis_fraction or leave it unset to search it")
    else:
        try:
            x = bisect_decreasing(cost_at, budget, 0.0, 1.0, steps=30)
        except ConfigError as e:
            raise ConfigError(f"method 'filter-basis': target={ctx.target!r}: {e} (every conv at {cfg.min_rank} "
                              f"basis filter(s)); ask for a larger fraction or lower options.min_rank") from None
        plan = basis_plan(convs, splits, 1.0 - x, cfg.min_rank) if x > 0 else {}
    energy_kept, energy_all, init = 0.0, 0.0, {}
    for n, m in plan.items():
        s2 = torch.linalg.svdvals(BasisConv.slices(convs[n], splits[n])).pow(2)
        energy_kept, energy_all = energy_kept + float(s2[:m].sum()), energy_all + float(s2.sum())
        new = BasisConv.from_conv(convs[n], splits[n], m)
        init[n] = new.basis.detach().clone()
        model.set_submodule(n, new)
    steps = 0
    if plan and ctx.prune_epochs >= 1:
        steps = fit(model, ctx.train_data, method_train_config(ctx)).steps
    change = [float((model.get_submodule(n).basis.detach() - b).norm() / b.norm().clamp_min(1e-30))
              for n, b in init.items()]
    params_after, macs_after = count_params(model), int(count_macs(model, ctx.example_inputs).total)
    telemetry = {"layers_decomposed": len(plan), "layers_considered": len(names),
                 "rank_kept": (sum(plan.values()) / sum(BasisConv.max_rank(convs[n], splits[n]) for n in plan)
                               if plan else 1.0),
                 "energy_kept": energy_kept / energy_all if energy_all else 1.0, "train_steps": int(steps),
                 "basis_change": sum(change) / len(change) if change else 0.0}
    log.info("filter-basis: %d of %d convs decomposed, %.3f of their rank kept", len(plan), len(names),
             telemetry["rank_kept"])
    info = {"splits": {n: splits[n] for n in plan}, "n_basis": plan, "params": [dense_params, params_after],
            "macs": [dense_macs, macs_after], "predicted_cost": _cost(plan), "epochs_trained": ctx.prune_epochs}
    return MethodResult(model=model, telemetry=telemetry, info=info)
