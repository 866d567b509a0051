"""ThiNet: prune a layer's filters by how little their removal changes the next layer, then rescale.

Paper: Jian-Hao Luo, Jianxin Wu, Weiyao Lin, "ThiNet: A Filter Level Pruning Method for Deep Neural
Network Compression", ICCV 2017. https://arxiv.org/abs/1707.06342

ThiNet judges filters by the statistics of the layer that reads them: it samples output values of the
next layer, splits each into per-input-channel contributions, greedily collects the channels whose summed
contribution stays nearest zero, removes them, and re-weights the surviving channels by least squares so
the next layer's output is preserved; the paper goes layer by layer with a short fine-tune after each.
Here the ``thinet`` criterion gives the greedy order, the engine cuts every layer by the same fraction to
meet the MAC/parameter target, and every layer whose inputs were cut is re-fitted by least squares to its
outputs recorded on the unpruned model: the whole kept weight by default (``refit="full"``), ThiNet's one
scaling factor per kept channel with ``refit="scale"`` (see DEFAULTS for why the default differs). Left
out: the fine-tune between layers (one cut for all layers, then the shared fine-tune).
"""
from __future__ import annotations

from ._registry import MethodResult, RunContext, get_method, register_method
from .l1_filter import _choice, check_context

DEFAULTS = {
    "allocation": "uniform",  # the same kept fraction r in every pruned layer
    # "full": least squares on the whole kept weight of every layer whose inputs were cut; "scale": ThiNet's
    # one factor per kept input channel; "none". With one cut for all layers and no fine-tune between them
    # (this implementation), the scaled network fine-tunes worse than the unscaled one on ResNet-20 at 4x
    # (benchmarks/recipes/thinet_refit_*.yaml), while the full fit, which solves the same objective with
    # more freedom, ends best; so "full" is the default and "scale" stays available.
    "refit": "full",
}


def prune_and_refit(ctx: RunContext, method: str, criterion: str, allocation: str, refit: str) -> dict:
    """Record the readers' outputs, cut with ``criterion``, re-fit the readers whose inputs were cut."""
    from ..api import plan, prune_
    from ..criteria.reconstruction import least_squares_refit_, record_io

    p = plan(ctx.model, ctx.example_inputs, target=ctx.target, criterion=criterion, calib=ctx.calib,
             ignore=list(ctx.ignore), global_=allocation == "global", seed=ctx.seed)
    readers = sorted({m["fqn"].rpartition(".")[0] for g in p.groups if g.channels for m in g.members
                      if m.get("role") == "consumer" and m["fqn"].endswith(".weight") and m["dim"] == 1})
    targets = record_io(ctx.model, ctx.calib, readers) if refit != "none" else {}
    for f in list(targets):  # a reader whose own filters are cut keeps only its surviving outputs
        cut = sorted({i for g in p.groups for m in g.members if m["fqn"] == f + ".weight" and m["dim"] == 0
                      for i in m["indices"]})
        if cut:
            keep = [i for i in range(targets[f].shape[1]) if i not in set(cut)]
            targets[f] = targets[f][:, keep]
    rep = prune_(ctx.model, p)
    errors = least_squares_refit_(ctx.model, ctx.calib, targets, mode=refit, seed=ctx.seed) if targets else {}
    return {"engine_report": rep.to_dict(), "refit": refit, "refit_mse": errors}


@register_method("thinet", kind="structured", status="partial", defaults=DEFAULTS, needs_data=True,
                 left_out="the short fine-tune after each layer: all layers are cut at once, then re-fitted "
                          "by least squares (the whole kept weight by default; the paper's per-channel "
                          "scaling with refit='scale'), then the shared fine-tune runs")
def run(ctx: RunContext) -> MethodResult:
    opts = get_method("thinet").options(ctx.options)
    _choice("thinet", "allocation", opts["allocation"], ("uniform", "global"))
    _choice("thinet", "refit", opts["refit"], ("scale", "full", "none"))
    check_context(ctx, "thinet", needs_calib=True)
    info = prune_and_refit(ctx, "thinet", "thinet", opts["allocation"], opts["refit"])
    return MethodResult(model=ctx.model, info={"criterion": "thinet", **opts, **info})
