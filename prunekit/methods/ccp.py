"""CCP: choose each layer's pruned channels jointly, by a quadratic model of the loss that couples pairs.

Paper: Hanyu Peng, Jiaxiang Wu, Shifeng Chen, Junzhou Huang, "Collaborative Channel Pruning for Deep
Networks", ICML 2019. http://proceedings.mlr.press/v97/peng19c.html

Scoring channels one at a time ignores that removing two channels together can hurt more (or less) than the
sum of removing each. CCP expands the loss increase of removing a set of channels to second order: with a
0/1 keep-mask ``beta``, ``dL(beta) = sum_i (1-beta_i) u_i + sum_ij (1-beta_i)(1-beta_j) s_ij``, where the
first-order terms ``u_i`` come from the gradient and the pairwise terms ``s_ij`` from a Hessian approximated
by products of first-order gradients, both accumulated in one pass over the data of the trained network.
Each layer keeps a predefined number of channels (the same ratio everywhere) and its mask is the solution of
this constrained 0-1 quadratic program; the masked network is then fine-tuned.

Here a channel is removed by setting a gate after its BatchNorm (after the layer itself when it has none)
from 1 to 0, which is exactly what the structural cut does to the next layer's input. With ``t_i^n`` the
gate's gradient term of example n (``sum over positions of z dL/dz``), ``u_i = -mean_n t_i^n`` and
``s_ij = mean_n t_i^n t_j^n / 2`` (the empirical Fisher in place of the Hessian). ``S`` is positive
semidefinite, so the program relaxed to ``0 <= 1-beta <= 1`` is convex: it is solved with scipy, the largest
relaxed values are rounded to the pruned set, and single swaps between the pruned and kept sets are made
while they lower the objective. The per-layer counts come from the engine's uniform allocation at the
MAC/parameter target; the cut is physical.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..api import plan_channels, prune_
from ..criteria.collect import collect
from ..data import first_examples
from ..errors import ConfigError
from ._config import MethodConfig, option
from ._filter_common import _graph, filter_groups, select_to_target
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["CCPConfig", "objective", "solve_qp", "first_order_selection", "gate_terms", "run"]


@dataclass(frozen=True)
class CCPConfig(MethodConfig):
    images: int | None = option(None, ge=1)  # images the terms are accumulated on; None = all calibration
    # data (sec. 3: one pass over the training set)
    allocation: Literal["uniform"] = "uniform"  # predefined equal pruning ratio per layer (sec. 4)
    pairwise: bool = True  # the s_ij terms (sec. 3.2); False = first-order terms only (ours: the ablation)
    swaps: int = option(1000, ge=0)  # ours: most single-swap improvements after rounding the relaxation


def objective(pruned, u: np.ndarray, s: np.ndarray) -> float:
    """``sum_{i in P} u_i + sum_{i,j in P} s_ij`` for the pruned set ``P``."""
    p = np.asarray(sorted(pruned), dtype=np.int64)
    return float(u[p].sum() + s[np.ix_(p, p)].sum()) if len(p) else 0.0


def first_order_selection(u: np.ndarray, m: int) -> np.ndarray:
    """The ``m`` channels of smallest ``u_i`` (the objective without its pairwise terms), ties by index."""
    return np.sort(np.argsort(u, kind="stable")[:m]).astype(np.int64)


def solve_qp(u: np.ndarray, s: np.ndarray, m: int, max_swaps: int = 1000) -> tuple[np.ndarray, int]:
    """Prune ``m`` of ``len(u)`` channels minimising :func:`objective`: the convex relaxation
    ``min u^T x + x^T S x, 0 <= x <= 1, sum x = m`` (scipy SLSQP; ``S`` symmetrised), its ``m`` largest values
    rounded to 1, then single pruned/kept swaps while one lowers the objective. Returns ``(pruned, swaps)``."""
    from scipy.optimize import minimize  # heavy optional dependency

    n = len(u)
    if m <= 0:
        return np.zeros(0, dtype=np.int64), 0
    if m >= n:
        return np.arange(n, dtype=np.int64), 0
    s = (s + s.T) / 2
    scale = max(float(np.abs(u).max(initial=0)), float(np.abs(s).max(initial=0)), 1e-300)
    uu, ss = u / scale, s / scale
    res = minimize(lambda x: float(uu @ x + x @ ss @ x), np.full(n, m / n), jac=lambda x: uu + 2 * ss @ x,
                   method="SLSQP", bounds=[(0.0, 1.0)] * n,
                   constraints=[{"type": "eq", "fun": lambda x: x.sum() - m, "jac": lambda x: np.ones(n)}],
                   options={"maxiter": 500, "ftol": 1e-12})
    x = res.x if np.all(np.isfinite(res.x)) else np.full(n, m / n)
    inside = np.zeros(n, dtype=bool)
    inside[np.argsort(-x, kind="stable")[:m]] = True
    swaps = 0
    while swaps < max_swaps:  # change of the objective when i leaves P and j joins: one matrix expression
        ps = ss[:, inside].sum(1)  # sum_{k in P} s_ik
        out_, in_ = np.nonzero(inside)[0], np.nonzero(~inside)[0]
        gain_rm = -(uu[out_] + 2 * ps[out_] - np.diag(ss)[out_])  # objective change removing i from P
        gain_add = uu[in_] + 2 * ps[in_] + np.diag(ss)[in_]  # adding j to P (with P still holding i)
        delta = gain_rm[:, None] + gain_add[None, :] - 2 * ss[np.ix_(out_, in_)]
        a, b = np.unravel_index(np.argmin(delta), delta.shape)
        if delta[a, b] >= -1e-12 * max(1.0, abs(objective(out_, uu, ss))):
            break
        inside[out_[a]], inside[in_[b]] = False, True
        swaps += 1
    return np.nonzero(inside)[0].astype(np.int64), swaps


def gate_terms(model, groups, batches) -> dict:
    """``{group key: (u [width], s [width, width])}``: per example ``t_i = sum over positions of z dL/dz`` at
    the channel's gate (its BatchNorms' outputs, summed; the producing layers' outputs without BN),
    ``u = -mean t`` and ``s = mean t t^T / 2``."""
    gates = {g.key: (g.bns or g.convs) for g in groups}
    fqns = sorted({f for fs in gates.values() for f in fs})
    sums = {k: np.zeros(g.width) for k, g in zip(gates, groups)}
    prods = {k: np.zeros((g.width, g.width)) for k, g in zip(gates, groups)}
    count = [0]

    def add_batch(rec):
        n = None
        for key, fs in gates.items():
            t = 0
            for f in fs:
                for z, dz in zip(rec.outputs[f], rec.output_grads[f]):
                    n = z.shape[0]
                    # the loss is a batch mean: example n's own gradient is n_batch * dz
                    t = t + (z.double() * dz.double()).reshape(n, z.shape[1], -1).sum(2) * n
            t = t.numpy()
            sums[key] += t.sum(0)
            prods[key] += t.T @ t
        count[0] += n or 0

    collect(model, batches, outputs=fqns, output_grads=fqns, on_batch=add_batch, keep=False)
    n = max(count[0], 1)
    return {k: (-sums[k] / n, prods[k] / (2 * n)) for k in gates}


@register_method("ccp", config=CCPConfig, kind="structured", needs=("calib",), smoke={"images": 8},
                 telemetry=Telemetry(
                     keys=("layers", "channels_differ", "layers_differ", "objective_ccp", "objective_first_order",
                           "swaps"),
                     engaged=lambda t: t["channels_differ"] >= 1 and t["objective_ccp"] < t["objective_first_order"],
                     what="the pairwise (second-order) terms changing which channels each layer prunes",
                     knob="set options.pairwise=true and give calibration images with labels (the pairwise terms "
                          "come from their gradients); a target that prunes at least two channels of a layer"))
def run(ctx: RunContext, cfg: CCPConfig) -> MethodResult:
    model = ctx.model
    graph = _graph(model, ctx)
    groups = filter_groups(model, ctx, graph)
    if not groups:
        raise ConfigError(f"method 'ccp': model={type(model).__name__} has no prunable channel group")
    batches = first_examples(ctx.calib, cfg.images) if cfg.images else list(ctx.calib)
    terms = gate_terms(model, groups, batches)
    counts_sel, info = select_to_target(model, ctx, {k: torch.from_numpy(u) for k, (u, _) in terms.items()},
                                        cfg.allocation, groups, graph=graph)
    removal, differ, layers_differ, obj_ccp, obj_fo, swaps = {}, 0, 0, 0.0, 0.0, 0
    for g in groups:
        m = len(counts_sel.get(g.key, ()))
        if m == 0:
            continue
        u, s = terms[g.key]
        fo = first_order_selection(u, m)
        if cfg.pairwise:
            sel, k = solve_qp(u, s, m, cfg.swaps)
            if objective(fo, u, s) < objective(sel, u, s):  # never worse than the first-order start
                sel = fo
        else:
            sel, k = fo, 0
        removal[g.key] = [int(i) for i in sel]
        d = len(set(sel.tolist()) ^ set(fo.tolist())) // 2
        differ, layers_differ, swaps = differ + d, layers_differ + (d > 0), swaps + k
        obj_ccp += objective(sel, u, s)
        obj_fo += objective(fo, u, s)
    report = prune_(model, plan_channels(model, ctx.example_inputs, removal, ignore=list(ctx.ignore)))
    telemetry = {"layers": len(removal), "channels_differ": differ, "layers_differ": layers_differ,
                 "objective_ccp": obj_ccp, "objective_first_order": obj_fo, "swaps": swaps}
    info.update({"removed": removal, "engine_report": report.to_dict(), "pairwise": cfg.pairwise})
    log.info("ccp: %d layers, %d channels differ from first-order selection", len(removal), differ)
    return MethodResult(model=model, info=info, telemetry=telemetry)
