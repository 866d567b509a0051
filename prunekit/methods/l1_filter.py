"""L1-filter: remove the filters with the smallest sum of absolute weights, layer by layer.

Paper: Hao Li, Asim Kadav, Igor Durdanovic, Hanan Samet, Hans Peter Graf, "Pruning Filters for Efficient
ConvNets", ICLR 2017. https://arxiv.org/abs/1608.08710

The paper ranks the filters of each convolution by the L1 norm of their own kernel weights and removes the
weakest ones together with the feature maps they produce and the matching input slices of the next layer.
How much each layer loses is read off a sensitivity analysis: every layer is pruned alone at growing
ratios and evaluated without retraining, and layers whose accuracy falls quickly are pruned less or not
at all; the network is then retrained. Here the score is the engine's ``l1`` criterion on the producing
filters (``reduce="producer"``), the allocation is the same fraction per layer by default (the engine
finds the fraction that meets the MAC/parameter target) or, with ``allocation="sensitivity"``, the
per-layer ratios of :mod:`prunekit.allocate.sensitivity` measured on the validation data.

:func:`criterion_separation` is the telemetry of every one-shot criterion cut (l1-filter, fpgm, hrank,
nisp): how far the criterion, not the tie-break, decided which channels went.
"""
from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..errors import ConfigError
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class L1FilterConfig(MethodConfig):
    allocation: Literal["uniform", "global", "sensitivity"] = "uniform"  # per-layer fractions: the paper reads
    # them off its sensitivity analysis (sec. 3.2, "sensitivity"); uniform (ours, the default) meets a target
    # without validation data; global ranks mean-normalised scores across layers (ours)
    reduce: Literal["producer", "group"] = "producer"  # score = the producing filter's own |W| (sec. 3.1)
    max_batches: int = option(4, ge=1)  # validation batches per evaluation of the sensitivity sweep (ours)


def _choice(method: str, name: str, value, choices) -> None:
    if value not in choices:
        from .._registry import closest

        hint = closest(str(value), list(choices))
        raise ConfigError(f"method {method!r}: options[{name!r}]={value!r} is not valid" +
                          (f"; did you mean {hint!r}?" if hint else "") + f"; choose one of {list(choices)}")


def check_context(ctx: RunContext, method: str, *, needs_calib: bool, needs_train: bool = False) -> None:
    """Fail before touching the model: target kind, data a method needs, ignore names (one error for all)."""
    from ..allocate import parse_target

    problems = []
    try:
        parse_target(ctx.target)
    except ConfigError as e:
        problems.append(f"method {method!r}: {e}")
    if needs_calib and not ctx.calib:
        problems.append(f"method {method!r} scores channels from data but calib={ctx.calib!r}; pass a few "
                        f"calibration batches (RunContext(calib=[(inputs, targets), ...]), `prunekit run` "
                        f"--calib-batches N) or use a data-free method such as 'l1-filter' or 'fpgm'")
    if needs_train and ctx.train_data is None:
        problems.append(f"method {method!r} fine-tunes between pruning steps but train_data=None; pass training "
                        f"batches (RunContext(train_data=loader))")
    if problems:
        raise ConfigError("; ".join(problems))
    if needs_calib:  # a data-free plan finds an unreachable target before any calibration pass
        from ..api import plan

        try:
            plan(ctx.model, ctx.example_inputs, target=ctx.target, criterion="l1", ignore=list(ctx.ignore))
        except ConfigError as e:
            raise ConfigError(f"method {method!r}: {e}") from None


def prune_with_criterion(ctx: RunContext, method: str, criterion: str, *, allocation: str = "uniform",
                         reduce: str = "group", per_layer: dict | None = None, calib_needed: bool = True,
                         target: str | None = None) -> dict:
    """One engine cut of ``ctx.model`` to ``ctx.target`` ranked by ``criterion``; returns the engine report.

    The engine plans first (an unreachable target or a missing input raises ConfigError and changes
    nothing) and applies the plan transactionally.
    """
    from ..api import prune_

    kw = dict(example_inputs=ctx.example_inputs, criterion=criterion, calib=ctx.calib if calib_needed else None,
              ignore=list(ctx.ignore), reduce=reduce, seed=ctx.seed)
    if per_layer is not None:
        rep = prune_(ctx.model, per_layer=per_layer, **kw)
    else:
        rep = prune_(ctx.model, target=target or ctx.target, global_=allocation == "global", **kw)
    return rep.to_dict()


def _cost(model, example_inputs, kind: str, ignore) -> int:
    from ..api import inspect

    ins = inspect(model, example_inputs, ignore=list(ignore))
    return ins.macs if kind == "macs" else ins.params


def _widths(model, example_inputs, ignore) -> int:
    from ..api import inspect

    return sum(g.width for g in inspect(model, example_inputs, ignore=list(ignore)).groups)


def _criterion_option(method: str, name) -> None:
    """Refuse a ``criterion`` option that is not a registered engine criterion (named, with the closest)."""
    from ..criteria import CRITERIA

    if not isinstance(name, str):
        raise ConfigError(f"{method}: criterion={name!r} must be the name of a criterion, e.g. 'random'")
    CRITERIA.get(name, argument=f"{method} option criterion")


def prune_iteratively(ctx: RunContext, method: str, criterion: str, *, per_round: int, max_rounds: int,
                      steps_between: int, lr: float, allocation: str = "global", reduce: str = "group") -> dict:
    """Remove ``per_round`` globally lowest-scoring channels per cut (more when ``max_rounds`` cuts would not
    reach ``ctx.target``), training ``steps_between`` minibatches of ``ctx.train_data`` with SGD (momentum
    0.9) after each cut; the last cut lands exactly on the target. Training steps are capped at
    ``ctx.prune_epochs`` passes over ``ctx.train_data`` when its length is known.

    The target is planned on the unpruned model first, so an unreachable one fails with the model unchanged.
    """
    from ..allocate import parse_target
    from ..api import plan

    kind, frac = parse_target(ctx.target)
    p = plan(ctx.model, ctx.example_inputs, target=ctx.target, criterion="l1", ignore=list(ctx.ignore),
             global_=allocation == "global", reduce=reduce)  # raises before any change
    n_total = sum(g.removed for g in p.groups)
    per = max(int(per_round), math.ceil(n_total / max(int(max_rounds), 1)))
    rounds = max(1, math.ceil(n_total / per))
    budget = None
    if ctx.train_data is not None and hasattr(ctx.train_data, "__len__"):
        budget = max(int(ctx.prune_epochs), 0) * len(ctx.train_data)
    steps = steps_between if budget is None else min(steps_between, budget // max(rounds - 1, 1))
    batches = itertools.cycle(ctx.train_data) if steps and ctx.train_data is not None else None
    dense = _cost(ctx.model, ctx.example_inputs, kind, ctx.ignore)
    history = []
    for k in range(rounds):
        now = _cost(ctx.model, ctx.example_inputs, kind, ctx.ignore)
        if now <= frac * dense:
            break
        if k == rounds - 1:
            prune_with_criterion(ctx, method, criterion, allocation=allocation, reduce=reduce,
                                 target=f"{kind}={min(frac * dense / now, 1.0):.12f}")
        else:
            total = _widths(ctx.model, ctx.example_inputs, ctx.ignore)
            from ..api import prune_

            prune_(ctx.model, example_inputs=ctx.example_inputs, criterion=criterion, calib=ctx.calib,
                   ignore=list(ctx.ignore), reduce=reduce, seed=ctx.seed, global_=allocation == "global",
                   sparsity=min((per + 0.5) / total, 0.99))
        history.append(_cost(ctx.model, ctx.example_inputs, kind, ctx.ignore) / dense)
        if batches is not None and k < rounds - 1:
            _train_steps(ctx.model, batches, steps, lr, ctx.device)
    return {"rounds": len(history), "channels_per_round": per, "steps_between": steps,
            f"kept_{kind}_history": history, f"{kind}_before": dense,
            f"{kind}_after": _cost(ctx.model, ctx.example_inputs, kind, ctx.ignore)}


def _train_steps(model, batches, steps: int, lr: float, device) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    was = model.training
    model.train()
    for _ in range(steps):
        x, y = next(batches)
        x, y = x.to(device), y.to(device)
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.train(was)


def criterion_separation(model, example_inputs, plan, criterion: str, *, calib=None, reduce: str = "group",
                         seed: int = 0) -> dict:
    """How far ``criterion`` decided ``plan`` (made on ``model``, not yet applied): the one-shot telemetry.

    Scores every group again through the engine (:func:`prunekit.api.score_groups`) and compares, per cut
    group, the removed channels with the lowest-scoring kept one: ``groups_cut``; ``groups_ranked``, the cut
    groups where at least one removed channel scores strictly below every kept one (the criterion, not the
    index order, chose it); ``tied_fraction``, removed channels scoring the same as the lowest kept one (the
    index order chose them); ``removed_over_kept``, the mean over cut groups of (mean removed score / mean
    kept score).
    """
    from ..api import score_groups
    from ..graph import build_graph

    named = dict(model.named_modules())
    ignore = {id(named[f]): f for f in plan.settings.get("ignore", []) if f in named}
    graph = build_graph(model, example_inputs, ignore_modules=ignore)
    scores = score_groups(model, graph, criterion, calib=calib, reduce=reduce, seed=seed)
    by_name = {g.name: s for g, s in zip(graph.groups, scores)}
    cut = ranked = removed_n = tied = 0
    ratios = []
    for g in plan.groups:
        if not g.removed or g.name not in by_name:
            continue
        s = np.asarray(by_name[g.name], dtype=np.float64)
        gone = np.zeros(len(s), bool)
        gone[g.channels] = True
        low_kept = s[~gone].min()
        same = np.isclose(s[gone], low_kept, rtol=1e-9, atol=1e-12)
        cut += 1
        ranked += bool(((s[gone] < low_kept) & ~same).any())
        removed_n += int(gone.sum())
        tied += int(same.sum())
        kept_mean = s[~gone].mean()
        ratios.append(float(s[gone].mean() / kept_mean) if kept_mean else 1.0)
    return {"groups_cut": cut, "groups_ranked": ranked, "tied_fraction": tied / max(removed_n, 1),
            "removed_over_kept": float(np.mean(ratios)) if ratios else 1.0}


ONE_SHOT_TELEMETRY = dict(
    keys=("groups_cut", "groups_ranked", "tied_fraction", "removed_over_kept"),
    engaged=lambda t: t["groups_ranked"] >= 1,
)


@register_method("l1-filter", config=L1FilterConfig, kind="structured",
                 telemetry=Telemetry(**ONE_SHOT_TELEMETRY,
                                     what="filters removed because their L1 norm is below the kept ones'",
                                     knob="no removed filter scored below the kept ones: the filters' L1 "
                                          "norms tie (a constant model?) or no group was cut; prune a trained "
                                          "model or lower the target"))
def run(ctx: RunContext, cfg: L1FilterConfig) -> MethodResult:
    import prunekit as pk

    info: dict = {"criterion": "l1", "reduce": cfg.reduce, "allocation": cfg.allocation}
    per_layer = None
    if cfg.allocation == "sensitivity":  # sec. 3.2: prune each layer alone, evaluate, spare the sensitive ones
        from ..allocate.sensitivity import ratios_for_target, sensitivity_curves

        data = ctx.val_data if ctx.val_data is not None else ctx.calib
        if data is None:
            raise ConfigError("method 'l1-filter': allocation='sensitivity' evaluates each pruned layer but "
                              "val_data=None and calib=None; pass val_data (or calib) batches, or use "
                              "allocation='uniform'")
        batches = list(itertools.islice(iter(data), cfg.max_batches))
        curves = sensitivity_curves(ctx.model, ctx.example_inputs,
                                    lambda m: pk.evaluate(m, batches, device=ctx.device)["accuracy"],
                                    criterion="l1", ignore=ctx.ignore, reduce=cfg.reduce, seed=ctx.seed)
        per_layer, drop = ratios_for_target(ctx.model, ctx.example_inputs, curves, ctx.target, ignore=ctx.ignore)
        info.update({"sensitivity": curves, "per_layer": per_layer, "accepted_drop": drop})
    how = {"per_layer": per_layer} if per_layer else {"target": ctx.target, "global_": cfg.allocation == "global"}
    plan = pk.plan(ctx.model, ctx.example_inputs, criterion="l1", reduce=cfg.reduce, ignore=list(ctx.ignore),
                   seed=ctx.seed, **how)
    telemetry = criterion_separation(ctx.model, ctx.example_inputs, plan, "l1", reduce=cfg.reduce, seed=ctx.seed)
    report = pk.prune_(ctx.model, plan)
    return MethodResult(model=ctx.model, info={**info, "engine_report": report.to_dict()}, telemetry=telemetry)
