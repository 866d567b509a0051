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

This module also holds the small driver the other one-shot criterion methods share
(:func:`prune_with_criterion`, :func:`prune_iteratively`).
"""
from __future__ import annotations

import itertools
import logging
import math

import torch

from ..errors import ConfigError
from ._registry import MethodResult, RunContext, get_method, register_method

log = logging.getLogger(__name__)

DEFAULTS = {
    "allocation": "uniform",  # uniform | global | sensitivity (the paper's per-layer choice)
    "reduce": "producer",  # score the producing filters' own weights, as the paper does
    "max_batches": 4,  # validation batches per evaluation of the sensitivity sweep
}
_ALLOCATIONS = ("uniform", "global", "sensitivity")


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


def _accuracy(model, batches) -> float:
    from ..graph.trace import model_device, move_to

    correct = n = 0
    was = model.training
    model.eval()
    device = model_device(model)
    with torch.no_grad():
        for x, y in batches:
            x, y = move_to((x, y), device)
            correct += int((model(x).argmax(1) == y).sum())
            n += len(y)
    model.train(was)
    return correct / max(n, 1)


@register_method("l1-filter", kind="structured", defaults=DEFAULTS, needs_data=False)
def run(ctx: RunContext) -> MethodResult:
    opts = get_method("l1-filter").options(ctx.options)
    _choice("l1-filter", "allocation", opts["allocation"], _ALLOCATIONS)
    _choice("l1-filter", "reduce", opts["reduce"], ("group", "producer"))
    check_context(ctx, "l1-filter", needs_calib=False)
    info: dict = {"criterion": "l1", "allocation": opts["allocation"]}
    per_layer = None
    if opts["allocation"] == "sensitivity":
        from ..allocate.sensitivity import ratios_for_target, sensitivity_curves

        data = ctx.val_data if ctx.val_data is not None else ctx.calib
        if data is None:
            raise ConfigError("method 'l1-filter' with allocation='sensitivity' evaluates each pruned layer: pass "
                              "val_data (or calib) batches, or use allocation='uniform'")
        batches = list(itertools.islice(iter(data), int(opts["max_batches"])))
        curves = sensitivity_curves(ctx.model, ctx.example_inputs, lambda m: _accuracy(m, batches), criterion="l1",
                                    ignore=ctx.ignore, reduce=opts["reduce"])
        per_layer, drop = ratios_for_target(ctx.model, ctx.example_inputs, curves, ctx.target, ignore=ctx.ignore)
        info.update({"sensitivity": curves, "per_layer": per_layer, "accepted_drop": drop})
    rep = prune_with_criterion(ctx, "l1-filter", "l1", allocation=opts["allocation"], reduce=opts["reduce"],
                               per_layer=per_layer, calib_needed=False)
    return MethodResult(model=ctx.model, info={**info, "engine_report": rep})
