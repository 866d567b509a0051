"""APQ's feature for a pruning library: predictor-guided evolutionary search of per-layer widths and bit-widths.

Paper: Tianzhe Wang, Kuan Wang, Han Cai, Ji Lin, Zhijian Liu, Hanrui Wang, Yujun Lin, Song Han, "APQ: Joint
Search for Network Architecture, Pruning and Quantization Policy", CVPR 2020. https://arxiv.org/abs/2006.08509
(reference code, read to understand: github.com/mit-han-lab/apq, ``methods/evolution/evolution_finder.py``,
``utils/accuracy_predictor.py``).

APQ searches a once-for-all supernet's architectures, channel counts and per-layer mixed precision jointly.
It never trains the candidates it compares: an MLP accuracy predictor, fitted on measured (configuration,
accuracy) pairs, scores them, and an evolutionary search maximises the predicted accuracy under a hardware
budget; the chosen network is then quantisation-aware fine-tuned. As a pruning method the paper is not
meaningful (its search space is a NAS supernet plus a quantisation flow), so this module ships the feature its
entry names: over a given network, the per-group kept widths and per-layer weight bit-widths are the
configuration; a few hundred configurations are measured on masked views of the model (weights quantised to
their bits, BatchNorm re-estimated, accuracy on held-out training images: the search block's evaluator), the
predictor (:mod:`prunekit.allocate.predictor`) is fitted on one split and its rank correlation reported on the
other, and the evolution finder searches the predicted accuracy under the MACs target (and an optional BitOps
budget). The winner is cut physically, its weights quantised, and a straight-through quantised-weight callback
is returned for the fine-tune.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..allocate.predictor import AccuracyPredictor, Encoding, evolve
from ..api import Subnets, prune_
from ..data import first_batches, first_examples
from ..errors import ConfigError
from ..quantize.uniform import quantize_to_bits
from ..train.callbacks import WeightSTE
from ..train.subnet_eval import SubnetEvaluator, recalibrate_bn
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["APQConfig", "run", "APQSpace"]

LEFT_OUT = ("APQ is a NAS/AutoML pipeline over a pre-trained once-for-all supernet with a quantisation flow, not a "
            "pruning method (entry: not meaningful as a library feature). Shipped instead: predictor-guided "
            "evolutionary search of per-group widths and per-layer weight bit-widths over the given network under "
            "a MACs (and optional BitOps) budget. Left out: the OFA supernet's depth/kernel choices, activation "
            "bit-widths, the FP32-to-quantised predictor transfer and the BitFusion latency/energy tables.")


@dataclass(frozen=True)
class APQConfig(MethodConfig):
    samples: int = option(200, ge=4)  # configurations measured to fit the predictor (entry's check: 200)
    val_fraction: float = option(0.2, gt=0, lt=1)  # ours: share of the measured ones held out to report Spearman
    width_choices: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)  # ours: kept fraction of each group's channels
    # (APQ's channel choices are OFA's expand ratios 3/4/6; here fractions of the given network's widths)
    bit_choices: tuple[int, ...] = (4, 6, 8)  # weight bits per layer (paper sec. 4: mixed precision 4/6/8 bits)
    bitops: float | None = option(None, gt=0, le=1)  # ours: a BitOps budget, fraction of the dense net at 8-bit
    # weights (APQ's budget is BitFusion latency/energy; None: only the MACs target)
    population: int = option(100, ge=2)  # evolution finder (reference code: population_size 100)
    generations: int = option(500, ge=0)  # reference code: max_time_budget 500
    parent_ratio: float = option(0.25, gt=0, le=1)  # reference code: parent_ratio 0.25
    mutation_ratio: float = option(0.5, ge=0, le=1)  # reference code: mutation_ratio 0.5
    mutate_prob: float = option(0.1, ge=0, le=1)  # reference code: mutate_prob 0.1
    hidden: int = option(400, ge=1)  # predictor: 3 hidden layers of 400 units (reference accuracy_predictor)
    layers: int = option(3, ge=1)  # reference accuracy_predictor: 3 hidden layers
    predictor_epochs: int = option(300, ge=1)  # ours: Adam epochs over the measured configurations
    recal_batches: int = option(20, ge=0)  # ours, as EagleEye's evaluator: training batches re-estimating BN
    val_images: int = option(2000, ge=1)  # ours: held-out training images each configuration is scored on
    criterion: Literal["l1", "l2"] = "l1"  # ours: which channels a group keeps at a width (L1 of the producing filters)
    verify_top: int = option(0, ge=0)  # ours: measure the k best distinct configurations of the last generation
    # and keep the best measured (0: the paper's choice, the highest predicted accuracy)


class APQSpace:
    """The joint space of one model: per-group kept widths (``width_choices`` of each group's channels) and
    per-layer weight bits. ``cost(config)`` is the kept fraction of MACs (or params) of the target's kind,
    ``bitops(config)`` the BitOps fraction of the dense model at 8-bit weights; both exact from the graph."""

    def __init__(self, subnets: Subnets, kind: str, width_choices, bit_choices):
        self.subnets, self.kind = subnets, kind
        space = subnets.space
        self.n_groups = len(space)
        widths = {n: sorted({space.snap(i, f * space.widths[i]) for f in width_choices})
                  for i, n in enumerate(space.names)}
        model = subnets.model
        mods = dict(model.named_modules())
        per = subnets.graph.macs_per_module()
        self.layers = [f for f in per if isinstance(mods.get(f), (nn.Conv2d, nn.Linear))]
        if not self.layers:
            raise ConfigError("apq: the model has no Conv2d or Linear layer whose weights could take a bit-width")
        self.encoding = Encoding.of({**widths, **{f"bits:{f}": tuple(sorted(bit_choices)) for f in self.layers}})
        self._dense_bitops = max(sum(per.values()) * 8, 1)
        self._cache: dict = {}

    def widths(self, config) -> tuple:
        return tuple(self.encoding.values(config)[: self.n_groups])

    def bits(self, config) -> dict:
        return dict(zip(self.layers, self.encoding.values(config)[self.n_groups:]))

    def costs(self, config) -> tuple:
        config = tuple(config)
        if config not in self._cache:
            w = self.widths(config)
            g = self.subnets.graph
            per = g.macs_per_module(g.removed_flat(self.subnets.removal(w)))
            bits = self.bits(config)
            bitops = sum(v * bits.get(f, 8) for f, v in per.items()) / self._dense_bitops
            self._cache[config] = (self.subnets.cost(w, self.kind), bitops)
        return self._cache[config]


@contextlib.contextmanager
def quantized_weights(model: nn.Module, bits: dict):
    """``model`` with the weight of each module in ``bits`` quantised to its bits (symmetric, per tensor);
    restored on exit."""
    mods = dict(model.named_modules())
    saved = []
    try:
        with torch.no_grad():
            for f, b in bits.items():
                w = mods[f].weight
                saved.append((w, w.detach().clone()))
                w.copy_(quantize_to_bits(w, int(b)))
        yield model
    finally:
        with torch.no_grad():
            for w, old in saved:
                w.copy_(old)


def _engaged(t: dict) -> bool:
    return t["generations"] >= 1 and t["predictor_val_spearman"] > 0.0


@register_method("apq", config=APQConfig, kind="structured", needs=("train", "val"), status="not-meaningful",
                 left_out=LEFT_OUT,
                 smoke={"samples": 8, "population": 8, "generations": 2, "predictor_epochs": 20, "recal_batches": 1,
                        "val_images": 32, "hidden": 16},
                 telemetry=Telemetry(
                     keys=("measured", "predictor_val_spearman", "predictor_train_spearman", "generations",
                           "predicted_candidates", "best_predicted", "best_measured", "best_sampled", "macs", "bitops",
                           "mean_bits"),
                     engaged=_engaged,
                     what="an evolutionary search guided by an accuracy predictor that ranks held-out configurations",
                     knob="raise options.samples (configurations measured to fit the predictor) or "
                          "options.generations, or options.recal_batches / val_images when the measurements are noisy"))
def run(ctx: RunContext, cfg: APQConfig) -> MethodResult:
    bad = [b for b in cfg.bit_choices if not isinstance(b, int) or b < 2]
    if bad or not cfg.bit_choices:
        raise ConfigError(f"options['bit_choices']={list(cfg.bit_choices)!r}: give ints >= 2 (e.g. [4, 6, 8])")
    if not cfg.width_choices or any(not 0 < f <= 1 for f in cfg.width_choices):
        raise ConfigError(f"options['width_choices']={list(cfg.width_choices)!r}: give fractions in (0, 1] of each "
                          f"group's channels (e.g. [0.25, 0.5, 0.75, 1.0])")
    model, x = ctx.model, ctx.example_inputs
    subnets = Subnets(model, x, criterion=cfg.criterion, ignore=ctx.ignore, seed=ctx.seed)
    space = APQSpace(subnets, ctx.target_kind, cfg.width_choices, cfg.bit_choices)
    limit = ctx.target_value

    def feasible(c) -> bool:
        cost, bitops = space.costs(c)
        return cost <= limit + 1e-12 and (cfg.bitops is None or bitops <= cfg.bitops + 1e-12)

    if not feasible(tuple(0 for _ in range(len(space.encoding)))):
        raise ConfigError(f"target={ctx.target!r}" + (f", bitops={cfg.bitops}" if cfg.bitops else "") +
                          ": not reachable even with every group at its smallest width choice "
                          f"({min(cfg.width_choices)}) and the fewest bits; raise the target or add smaller choices")
    recal = first_batches(ctx.train_data, cfg.recal_batches)
    evaluator = SubnetEvaluator(recal, first_examples(ctx.val_data, cfg.val_images), device=ctx.device,
                                adaptive_bn=bool(cfg.recal_batches))

    def measure(c) -> float:
        with subnets.masked(space.widths(c)) as view, quantized_weights(view, space.bits(c)):
            return evaluator(view)

    rng = np.random.default_rng(ctx.seed)
    configs, seen = [], set()
    for _ in range(cfg.samples * 1000):
        if len(configs) == cfg.samples:
            break
        c = space.encoding.random(rng)
        if c not in seen and feasible(c):
            seen.add(c)
            configs.append(c)
    accs = np.array([measure(c) for c in configs])
    predictor = AccuracyPredictor(space.encoding.width, hidden=cfg.hidden, layers=cfg.layers, seed=ctx.seed)
    report = predictor.fit(space.encoding.encode(configs), accs, val_fraction=cfg.val_fraction,
                           epochs=cfg.predictor_epochs)
    found = evolve(space.encoding, lambda cs: predictor.predict(space.encoding.encode(cs)), feasible,
                   population=cfg.population, generations=cfg.generations, parent_ratio=cfg.parent_ratio,
                   mutation_ratio=cfg.mutation_ratio, mutate_prob=cfg.mutate_prob, seed=ctx.seed)
    checked = found.top(max(1, cfg.verify_top))
    best, best_measured = found.best, measure(found.best)
    for c in checked[1:]:  # ours: the predictor's top over-predicts; measure a few more
        acc = measure(c)
        if acc > best_measured:
            best, best_measured = c, acc
    widths, bits = space.widths(best), space.bits(best)
    cost, bitops = space.costs(best)
    engine = prune_(model, subnets.plan(widths))
    with torch.no_grad():
        mods = dict(model.named_modules())
        for f, b in bits.items():
            mods[f].weight.copy_(quantize_to_bits(mods[f].weight, int(b)))
    if recal:
        recalibrate_bn(model, recal, ctx.device)
    ste = WeightSTE(model, [f"{f}.weight" for f in bits],
                    quantized=lambda fqn, w: quantize_to_bits(w, int(bits[fqn[: -len(".weight")]])))
    telemetry = {"measured": len(configs) + len(checked), "predictor_val_spearman": report.val_spearman,
                 "predictor_train_spearman": report.train_spearman, "generations": len(found.history) - 1,
                 "predicted_candidates": found.evaluated, "best_predicted": found.fitness,
                 "best_measured": best_measured, "best_sampled": float(accs.max()), "macs": cost, "bitops": bitops,
                 "mean_bits": float(np.mean(list(bits.values())))}
    info = {"widths": dict(zip(subnets.space.names, map(int, widths))), "bits": {f: int(b) for f, b in bits.items()},
            "predictor": report.as_dict(), "history": found.history[:: max(1, len(found.history) // 100)],
            "sampled": [{"config": list(map(int, c)), "accuracy": float(a)} for c, a in zip(configs, accs)],
            "choices": {n: list(c) for n, c in zip(space.encoding.names, space.encoding.choices)},
            "engine_report": engine.to_dict()}
    log.info("apq: %d configurations measured, predictor held-out Spearman %.3f, searched %.4f (best sampled %.4f)",
             len(configs), report.val_spearman, best_measured, accs.max())
    return MethodResult(model=model, info=info, telemetry=telemetry, callbacks=[ste])
