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
the MAC ratio, capped at ``max_factor`` times (Scratch-B), with :func:`prunekit.train.fit`. It therefore
trains more than a method that only uses ``prune_epochs``: ``info["epochs_trained"]`` counts every epoch
(the source's own training included) for a fair comparison.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Literal

from ..errors import ConfigError
from ._config import MethodConfig, option
from ._filter_common import reinitialise_, require_prune_epochs
from ..train.config import method_train_config
from ._registry import MethodResult, RunContext, Telemetry, get_method, register_method
from ..graph import build_graph
from ..train import fit

log = logging.getLogger(__name__)

__all__ = ["RethinkingConfig", "scratch_epochs", "reinitialise_"]


@dataclass(frozen=True)
class RethinkingConfig(MethodConfig):
    source: str = "l1-filter"  # the method whose pruned architecture is trained from scratch (paper: L1-norm, sec. 4.1)
    source_options: dict | None = None  # options passed to the source method (its defaults when None)
    schedule: Literal["scratch-E", "scratch-B"] = "scratch-B"  # same epochs | same compute (paper sec. 4)
    max_factor: float = option(2.0, gt=0)  # Scratch-B trains at most this many times the epochs (authors' ImageNet cap)

    def __post_init__(self):
        if self.source == "rethinking":
            raise ValueError("options['source']='rethinking': the source must be another structured method that "
                             "produces a pruned architecture, e.g. 'l1-filter' or 'slimming'")


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


def _macs(model, example_inputs) -> int:
    return int(build_graph(model, example_inputs).macs())


@register_method("rethinking", config=RethinkingConfig, kind="structured", needs=("train",),
                 telemetry=Telemetry(keys=("scratch_epochs", "source_epochs", "epochs_trained", "reinitialised"),
                                     engaged=lambda t: t["reinitialised"] > 0 and t["scratch_epochs"] >= 1,
                                     what="from-scratch training of the pruned architecture",
                                     knob="give prune_epochs >= 1 and a source whose result has modules to "
                                          "re-initialise"))
def run(ctx: RunContext, cfg: RethinkingConfig) -> MethodResult:
    require_prune_epochs(ctx, "rethinking")
    source = get_method(cfg.source)
    if source.kind != "structured":
        raise ConfigError(f"options['source']={cfg.source!r} is a {source.kind} method; Rethinking trains a "
                          f"pruned *architecture* from scratch, so choose a structured method such as 'l1-filter'")
    src_cfg = source.resolve(cfg.source_options or {})
    dense = _macs(ctx.model, ctx.example_inputs)
    result = source.run(replace(ctx, options=src_cfg))
    model = result.model
    pruned = _macs(model, ctx.example_inputs)
    epochs = scratch_epochs(ctx.prune_epochs, dense, pruned, cfg.schedule, cfg.max_factor)
    n_reset = reinitialise_(model)
    fit(model, ctx.train_data, method_train_config(ctx, epochs=epochs))
    # the source's own training (a training-time source reports more than prune_epochs when it loops)
    source_epochs = int(result.info.get("epochs_trained", ctx.prune_epochs if "train" in source.needs else 0))
    telemetry = {"scratch_epochs": epochs, "source_epochs": source_epochs, "epochs_trained": epochs + source_epochs,
                 "reinitialised": n_reset}
    info = {"source": cfg.source, "schedule": cfg.schedule, "dense_macs": dense, "pruned_macs": pruned,
            "prune_epochs": ctx.prune_epochs, **telemetry,
            "source_info": {k: v for k, v in result.info.items() if isinstance(v, (int, float, str, bool))}}
    return MethodResult(model=model, callbacks=list(result.callbacks), info=info, telemetry=telemetry)
