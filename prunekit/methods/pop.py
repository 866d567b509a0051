"""POP: a latency-aware Pareto search over width/depth multipliers that trains fewer candidates.

Paper: Xin Li, Yiming Zhou, Zheng Pan, Jiashi Feng, "Partial Order Pruning: for Best Speed/Accuracy Trade-off
in Neural Architecture Search", CVPR 2019. https://arxiv.org/abs/1903.03777 (reference code: Caffe models
only; the search code is not public).

The paper prunes an architecture *search space*, not a network: backbones are described by per-stage width and
depth, latency is profiled on the target device, and a partial order is assumed (a net no wider and no deeper
than another is no slower to beat: it is at most as accurate). Once a few candidates are trained, the trained
candidates above an untrained one bound its accuracy; if a faster trained candidate already reaches that bound,
the untrained one can never be on the speed/accuracy front and is not trained. The output is the front.

Status ``not-meaningful`` (the entry: it designs new architectures for a device rather than pruning a trained
model). What ships is the entry's closest feature: :func:`family_search` over a model family
``builder(width, depth) -> nn.Module`` (measured CPU latency, each candidate trained from scratch) and, as the
registered method, the same search over per-stage width multipliers of a given model through the engine
(each candidate a physically pruned copy, latency measured, "training" a short fine-tune); the method hands
back the most accurate candidate of the front that meets the target, and the front in ``info``.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
from torch import nn

from ..allocate.pareto import PartialOrderResult, partial_order_search
from ..allocate.progressive import stage_candidates
from ..api import Subnets, prune_
from ..data import first_batches, first_examples
from ..errors import ConfigError
from ..measure.latency_table import time_forward
from ..train import TrainConfig, evaluate, fit
from ..train.subnet_eval import FinetuneEvaluator
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["POPConfig", "family_search", "FamilySearch", "run"]

LEFT_OUT = ("not meaningful as a pruning method (entry): POP designs new architectures for a given device by "
            "pruning an architecture search space, not a trained network, and needs per-device latency. Shipped "
            "as the closest feature: a latency-aware Pareto search with partial-order cuts over a model family "
            "(prunekit.methods.pop.family_search) or over per-stage width multipliers of the given model (this "
            "method; depth is not searched on a given model, candidates are fine-tuned briefly, not trained)")


@dataclass
class FamilySearch:
    """:func:`family_search`'s answer: the partial-order ``result`` over ``grid`` (``(width, depth)`` per
    candidate) and the trained candidates' models (``models[i]``, when ``keep_models``)."""

    grid: list
    result: PartialOrderResult
    models: dict

    def front(self) -> list:
        """``[{"width", "depth", "latency_ms", "accuracy"}]`` of the front, fastest first."""
        r = self.result
        return [{"width": self.grid[i][0], "depth": self.grid[i][1], "latency_ms": r.latency[i],
                 "accuracy": r.scores[i]} for i in r.front]


def family_search(builder: Callable[[float, int], nn.Module], widths: Sequence[float], depths: Sequence[int], *,
                  example_inputs, train, val, config: TrainConfig | None = None, seed: int = 0,
                  latency_runs: int = 20, order: str = "cut-first", known: dict | None = None,
                  latency: Sequence[float] | None = None, statistic: str = "median", clock: str = "wall",
                  on_trained: Callable[[int, float], None] | None = None,
                  keep_models: bool = False) -> FamilySearch:
    """The speed/accuracy front of ``builder(width, depth)`` over ``widths x depths``, training only the
    candidates the partial order cannot cut (:func:`prunekit.allocate.pareto.partial_order_search`).

    Every candidate's latency is measured first (``time_forward``: batch ``example_inputs``, one thread,
    ``statistic`` (``"median"`` or ``"p10"``) of ``latency_runs``, on the ``clock`` ``"wall"`` or ``"cpu"``: the
    thread's CPU time, steady on a busy machine); a trained candidate is built under ``torch.manual_seed(seed)``, trained by
    ``fit(model, train, config)`` and scored by accuracy on ``val`` (held-out training data). ``known``:
    ``{(width, depth): accuracy}`` already measured (a resumed run), used instead of training again;
    ``latency``: the candidates' latencies (in grid order) measured before, instead of measuring.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> def build(w, d):
        ...     return nn.Sequential(nn.Flatten(), *[nn.Linear(4 if i == 0 else int(w), int(w)) for i in range(d)],
        ...                          nn.Linear(int(w), 2))
        >>> data = [(torch.randn(8, 4), torch.randint(0, 2, (8,)))]
        >>> fs = family_search(build, [2, 4], [1, 2], example_inputs=torch.randn(1, 4), train=data, val=data,
        ...                    config=TrainConfig(epochs=1, progress=False), latency_runs=2)
        >>> len(fs.grid), 1 <= len(fs.result.trained) <= 4
        (4, True)
    """
    grid = [(float(w), int(d)) for w in sorted(set(widths)) for d in sorted(set(depths))]
    if not grid:
        raise ConfigError("family_search: widths and depths must each hold at least one value")
    config = config if config is not None else TrainConfig(progress=False)
    lat = list(latency) if latency is not None else []
    for w, d in grid[len(lat):]:
        torch.manual_seed(seed)
        lat.append(time_forward(builder(w, d).eval(), example_inputs, runs=latency_runs, statistic=statistic,
                                clock=clock))
    models, known = {}, dict(known or {})

    def train_one(i: int) -> float:
        if grid[i] in known and not keep_models:
            return float(known[grid[i]])
        torch.manual_seed(seed)
        model = builder(*grid[i])
        fit(model, train, config.replace(seed=seed))
        acc = float(evaluate(model, val, device=config.device)["accuracy"])
        if keep_models:
            models[i] = model
        return acc

    res = partial_order_search(grid, lat, train_one, order=order, on_trained=on_trained)
    return FamilySearch(grid, res, models)


@dataclass(frozen=True)
class POPConfig(MethodConfig):
    multipliers: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)  # ours: the kept fraction of a stage's channels
    # each candidate picks per stage (the paper searches per-stage widths of its DF backbones)
    stages: int = option(3, ge=1)  # ours: contiguous blocks of the model's prunable layers sharing a
    # multiplier (the paper's backbones have stages; a ResNet-20 has 3)
    finetune_steps: int = option(50, ge=0)  # ours: fine-tune steps scoring a candidate (the paper trains every
    # candidate in full; here they inherit the model's weights)
    val_images: int = option(1000, ge=1)  # ours: held-out training images a candidate is scored on
    cost: Literal["latency", "macs"] = "latency"  # the speed axis: measured latency (paper: profiled on the
    # device) or the kept fraction of MACs (ours: deterministic, no timing noise)
    latency_runs: int = option(20, ge=1)  # timed forwards per candidate, median (paper: profiled on the device)
    clock: Literal["wall", "cpu"] = "wall"  # ours: "cpu" reads the thread's CPU time (steady on a busy machine)
    order: Literal["cut-first", "latency", "exhaustive"] = "cut-first"  # ours: which candidate is trained next
    # (the paper's order is not published); "exhaustive" trains all (no cut: the control)
    criterion: Literal["l1", "l2"] = "l1"  # ours: which channels a narrowed stage keeps (the paper trains from
    # scratch, so it has none)
    max_candidates: int = option(256, ge=1)  # ours: refuse a grid with more candidates within the target


def _engaged(t: dict) -> bool:
    return t["cut"] >= 1


@register_method("pop", config=POPConfig, kind="structured", needs=("train", "val"), status="not-meaningful",
                 left_out=LEFT_OUT,
                 # smoke: MACs for latency, so a tiny run's work and choice do not hang on noisy timings (the
                 # contract tests count its torch calls and replay it from checkpoints)
                 smoke={"multipliers": [0.5, 1.0], "stages": 2, "finetune_steps": 1, "val_images": 32,
                        "cost": "macs"},
                 telemetry=Telemetry(
                     keys=("candidates", "trained", "cut", "front_size", "violations"),
                     engaged=_engaged,
                     what="the partial order cut candidates before training them",
                     knob="widen the grid (options.multipliers, options.stages): with few candidates within the "
                          "target none is slower than a trained one that beats its accuracy bound"))
def run(ctx: RunContext, cfg: POPConfig) -> MethodResult:
    model = ctx.model
    sub = Subnets(model, ctx.example_inputs, criterion=cfg.criterion, ignore=ctx.ignore, seed=ctx.seed)
    configs, widths = stage_candidates(sub.space, cfg.stages, cfg.multipliers)
    inside = [i for i, w in enumerate(widths) if sub.cost(w, ctx.target_kind) <= ctx.target_value + 1e-9]
    if not inside:
        floor = min(sub.cost(w, ctx.target_kind) for w in widths)
        raise ConfigError(f"target={ctx.target!r}: no candidate of options.multipliers={list(cfg.multipliers)} "
                          f"over {cfg.stages} stages meets it (the smallest keeps {floor:.3f}); add a smaller "
                          f"multiplier or raise the target")
    if len(inside) > cfg.max_candidates:
        raise ConfigError(f"{len(inside)} candidates meet target={ctx.target!r}, over options.max_candidates="
                          f"{cfg.max_candidates}; use fewer multipliers or stages, or raise max_candidates")
    configs, widths = [configs[i] for i in inside], [widths[i] for i in inside]
    x = ctx.example_inputs[:1] if isinstance(ctx.example_inputs, torch.Tensor) else ctx.example_inputs
    latency = ([time_forward(sub.pruned_copy(w), x, runs=cfg.latency_runs, clock=cfg.clock) for w in widths]
               if cfg.cost == "latency" else [sub.cost(w, "macs") for w in widths])
    evaluator = FinetuneEvaluator(first_batches(ctx.train_data, cfg.finetune_steps),
                                  first_examples(ctx.val_data, cfg.val_images), steps=cfg.finetune_steps,
                                  config=ctx.train_config, device=ctx.device)
    trained = {}

    def train_one(i: int) -> float:
        torch.manual_seed(ctx.seed)
        trained[i] = sub.pruned_copy(widths[i])
        return evaluator(trained[i])

    res = partial_order_search(configs, latency, train_one, order=cfg.order)
    best = max(res.front, key=lambda i: (res.scores[i], -latency[i]))
    report = prune_(model, sub.plan(widths[best]))
    model.load_state_dict(trained[best].state_dict())  # hand on the candidate as it was scored
    front = [{"multipliers": list(configs[i]), "latency_ms": latency[i], "accuracy": res.scores[i],
              "cost": sub.cost(widths[i], ctx.target_kind)} for i in res.front]
    telemetry = {"candidates": len(configs), "trained": len(res.trained), "cut": len(res.cut),
                 "front_size": len(res.front), "violations": len(res.violations)}
    info = {"front": front, "chosen": {"multipliers": list(configs[best]), "latency_ms": latency[best],
                                       "accuracy": res.scores[best]},
            "widths": dict(zip(sub.space.names, widths[best])), "search": res.as_dict(),
            "engine_report": report.to_dict()}
    log.info("pop: %d candidates within %s, %d trained, %d cut, front of %d", len(configs), ctx.target,
             len(res.trained), len(res.cut), len(res.front))
    return MethodResult(model=model, info=info, telemetry=telemetry)
