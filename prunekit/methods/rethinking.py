"""Rethinking: train the pruned architecture from scratch (Scratch-E / Scratch-B) instead of fine-tuning.

Paper: Zhuang Liu, Mingjie Sun, Tinghui Zhou, Gao Huang, Trevor Darrell, "Rethinking the Value of Network
Pruning", ICLR 2019. https://arxiv.org/abs/1810.05270

The paper questions the usual train-prune-fine-tune pipeline: for structured pruning, re-initialising the
architecture a pruner produced and training it from scratch matches or beats fine-tuning the inherited
weights, so what a structured pruner really contributes is the architecture (the per-layer widths), not the
weights. It uses two budgets: *Scratch-E* trains the small model for as many epochs as the large one was
trained, *Scratch-B* gives it the same computation, i.e. more epochs in proportion to the MACs saved (capped
at twice the epochs, as the authors do on ImageNet). Here the method runs any other registered structured
method (``options={"source": "l1-filter"}``, its own options in ``source_options``) to obtain the pruned
architecture, re-initialises every parameter and BatchNorm statistic of the result with each module's own
initialiser, and trains it from scratch for ``ctx.prune_epochs`` (Scratch-E) or ``ctx.prune_epochs`` times
the MAC ratio, capped at ``max_factor`` times (Scratch-B), with :func:`prunekit.train.fit`.
"""
from __future__ import annotations

import logging
import math

from torch import nn

from ..errors import ConfigError
from ._filter_common import (
    check_choice, check_positive, check_target_reachable, check_training_context, method_options, train_config,
)
from ._registry import MethodResult, RunContext, register_method

log = logging.getLogger(__name__)

DEFAULTS = {
    "source": "l1-filter",  # the method whose pruned architecture is trained from scratch
    "source_options": {},  # options passed to the source method
    "schedule": "scratch-B",  # scratch-E: same epochs | scratch-B: same compute (MACs x epochs)
    "max_factor": 2.0,  # Scratch-B never trains more than this many times the epochs (authors' ImageNet cap)
}
SCHEDULES = ("scratch-E", "scratch-B")


def scratch_epochs(epochs: int, dense_macs: int, pruned_macs: int, schedule: str = "scratch-B",
                   max_factor: float = 2.0) -> int:
    """Epochs of from-scratch training: ``epochs`` (Scratch-E) or ``epochs * dense/pruned`` capped (Scratch-B).

    Example:
        >>> scratch_epochs(4, 100, 40), scratch_epochs(4, 100, 80), scratch_epochs(4, 100, 40, "scratch-E")
        (8, 5, 4)
    """
    if schedule == "scratch-E":
        return epochs
    factor = min(dense_macs / max(pruned_macs, 1), max_factor)
    return max(epochs, int(math.ceil(epochs * factor - 1e-9)))


def reinitialise_(model: nn.Module) -> int:
    """Re-draw every parameter with its module's own initialiser; returns how many modules were reset."""
    n = 0
    for m in model.modules():
        if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
            m.reset_parameters()
            n += 1
        elif hasattr(m, "reset_running_stats"):
            m.reset_running_stats()
    return n


def _macs(model, example_inputs) -> int:
    from ..graph import build_graph

    return int(build_graph(model, example_inputs).macs())


@register_method("rethinking", kind="structured", defaults=DEFAULTS, needs_data=True)
def run(ctx: RunContext) -> MethodResult:
    from dataclasses import replace

    from ._registry import get_method
    from ..train import fit

    opts = method_options("rethinking", ctx)
    check_choice("schedule", opts["schedule"], SCHEDULES)
    check_positive(opts, "max_factor")
    if opts["source"] == "rethinking":
        raise ConfigError("options['source']='rethinking': the source must be another structured method that "
                          "produces a pruned architecture, e.g. 'l1-filter' or 'slimming'")
    if not isinstance(opts["source_options"], dict):
        raise ConfigError(f"options['source_options']={opts['source_options']!r} must be a dict of the source "
                          f"method's options, e.g. {{}}")
    check_training_context(ctx, "rethinking")
    check_target_reachable(ctx.model, ctx)
    source = get_method(opts["source"])
    if source.kind != "structured":
        raise ConfigError(f"options['source']={opts['source']!r} is a {source.kind} method; Rethinking trains a "
                          f"pruned *architecture* from scratch, so choose a structured method such as 'l1-filter'")
    src_opts = source.options(opts["source_options"])
    dense = _macs(ctx.model, ctx.example_inputs)
    result = source.run(replace(ctx, options=src_opts))
    model = result.model
    pruned = _macs(model, ctx.example_inputs)
    epochs = scratch_epochs(ctx.prune_epochs, dense, pruned, opts["schedule"], float(opts["max_factor"]))
    reinitialise_(model)
    fit(model, ctx.train_data, train_config(ctx, epochs=epochs))
    info = {"source": opts["source"], "schedule": opts["schedule"], "scratch_epochs": epochs,
            "dense_macs": dense, "pruned_macs": pruned,
            "source_info": {k: v for k, v in result.info.items() if isinstance(v, (int, float, str, bool))}}
    return MethodResult(model=model, callbacks=list(result.callbacks), info=info)
