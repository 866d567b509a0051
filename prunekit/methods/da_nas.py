"""DA-NAS: progressive pruning of search candidates along a data curriculum (easy classes first).

Paper: Xiyang Dai, Dongdong Chen, Mengchen Liu, Yinpeng Chen, Lu Yuan, "DA-NAS: Data Adapted Pruning for
Efficient Neural Architecture Search", ECCV 2020. https://arxiv.org/abs/2003.12563 (reference code: not found).

The paper's observation: candidate blocks of a supernet learn easy classes faster, and the weak ones can
already be told apart on a small, easy part of the data. So the search starts on a few easy classes, drops the
lowest-ranked candidates of every layer, then grows the data (more, harder classes) and drops again, until the
full data set is used and the candidate set is small; the search there is cheap because most candidates were
only ever trained on a fraction of the data. The class-difficulty measure, the number of stages and the counts
pruned per stage are not given in the sources read; ours are options (below).

Status ``not-meaningful`` (the entry: a NAS search-acceleration strategy, not a way to prune a trained
network). What ships is the entry's closest feature: :func:`supernet_search` (a supernet of candidate ops,
:mod:`prunekit.models.supernet`, pruned stage by stage on a class curriculum) and, as the registered method,
the same progressive pruning over width candidates of a given model (per-stage width multipliers within the
target, :func:`prunekit.allocate.progressive.stage_candidates`): each stage fine-tunes and scores the survivors
on the stage's classes only, the easiest first (difficulty: the given model's error per class), keeps the top
fraction, and the last survivor is cut from the model.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from ..allocate.progressive import class_curriculum, progressive_prune, stage_candidates
from ..api import Subnets, prune_
from ..data import first_batches, first_examples
from ..errors import ConfigError
from ..models.supernet import SuperNet, op_macs
from ..train import TrainConfig, fit
from ..train.subnet_eval import FinetuneEvaluator
from ._config import MethodConfig, option
from ._soft_masks import MaskTraining
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["DANASConfig", "class_batches", "class_error", "supernet_search", "run"]

LEFT_OUT = ("not meaningful as a pruning method (entry): DA-NAS accelerates a one-shot architecture search by "
            "pruning candidate blocks of a supernet on a data curriculum; it does not prune a trained network. "
            "Shipped as the closest feature: progressive pruning of candidates with an easy-classes-first "
            "curriculum, over supernet ops (prunekit.methods.da_nas.supernet_search) or over per-stage width "
            "candidates of the given model (this method); the paper's class-difficulty measure, stage count and "
            "per-stage pruning counts are not published and are options here, and its final FLOPs-constrained "
            "search and retraining are left to the shared fine-tune")


def class_batches(batches, classes: Sequence[int]) -> list:
    """The examples of ``batches`` whose label is in ``classes`` (batches that keep none are left out)."""
    keep = torch.tensor(sorted(set(int(c) for c in classes)))
    out = []
    for x, y in batches:
        m = torch.isin(y, keep)
        if bool(m.any()):
            out.append((x[m], y[m]))
    return out


@torch.no_grad()
def class_error(model, batches, num_classes: int, device: str = "cpu") -> list:
    """Per-class error of ``model`` on ``batches`` (a class it never sees: 1.0), the difficulty the curriculum
    orders classes by (ours: the paper's measure is not published)."""
    was = model.training
    model.eval()
    right, seen = torch.zeros(num_classes), torch.zeros(num_classes)
    try:
        for x, y in batches:
            pred = model(x.to(device)).argmax(1).cpu()
            seen += torch.bincount(y, minlength=num_classes)[:num_classes].float()
            right += torch.bincount(y[pred == y], minlength=num_classes)[:num_classes].float()
    finally:
        model.train(was)
    return [1.0 - float(r / s) if s > 0 else 1.0 for r, s in zip(right, seen)]


def supernet_search(net: SuperNet, train, stages: Sequence[Sequence[int]], *, epochs: Sequence[int] | int = 1,
                    keep: float = 0.5, final_keep: int | None = None, config: TrainConfig | None = None,
                    arch_lr: float = 3e-3) -> dict:
    """Train ``net`` on the classes of each stage in turn (``stages[s]``: class ids; ``train``: the full
    training batches) -- weights through ``fit`` with ``config``, the architecture logits on the same batches
    by their own Adam step of ``arch_lr`` after every weight step (one-level DARTS; DARTS's Adam, its lr ours for
    short runs) -- and after each stage keep the top ``keep`` of every layer's alive candidates by their
    architecture weight (``final_keep`` after the last).

    Returns ``{"alive", "probabilities" (per stage, per layer), "macs" (search compute: images x MACs of the
    alive candidates, summed over stages), "images"}``. A single stage over every class with ``keep=1`` is the
    plain (unpruned) supernet search the curriculum is compared with.
    """
    config = config if config is not None else TrainConfig(progress=False)
    epochs = [epochs] * len(stages) if isinstance(epochs, int) else list(epochs)
    if len(epochs) != len(stages):
        raise ConfigError(f"epochs={epochs!r} needs one entry per stage ({len(stages)})")
    layers = net.choice_layers()
    x0 = next(iter(train))[0]
    costs = op_macs(net, x0)
    probs, macs, images = [], 0, 0

    def score(s, alive):
        nonlocal macs, images
        data = class_batches(train, stages[s])
        n = sum(len(y) for _, y in data) * epochs[s]
        arch = MaskTraining(lambda step: None, params=net.arch_parameters(), lr=arch_lr)
        fit(net, data, config.replace(epochs=epochs[s]), callbacks=[arch])
        macs += n * sum(costs[k][i] for k, a in enumerate(alive) for i in a)
        images += n
        p = [layer.probabilities().tolist() for layer in layers]
        probs.append(p)
        return [[p[k][i] for i in a] for k, a in enumerate(alive)]

    logp = progressive_prune([len(layer.ops) for layer in layers], len(stages), score, keep=keep,
                             final_keep=final_keep)
    for layer, a in zip(layers, logp.alive):
        layer.keep_(a)
    return {"alive": logp.alive, "probabilities": probs, "macs": int(macs), "images": int(images),
            "dropped": logp.dropped}


@dataclass(frozen=True)
class DANASConfig(MethodConfig):
    curriculum: tuple[float, ...] = (0.4, 1.0)  # ours: fraction of the classes (easiest first) each stage uses
    # (the paper grows the data from easy classes to all; stage count not published; 4 of 10 = the entry's check)
    keep: float = option(0.5, gt=0, le=1)  # ours: fraction of the candidates a stage keeps (not published)
    multipliers: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)  # ours: per-stage kept-width choices a candidate
    # takes (the width candidates of the search block)
    stages: int = option(3, ge=1)  # ours: blocks of the model's prunable layers sharing a multiplier
    finetune_steps: int = option(20, ge=0)  # ours: fine-tune steps per candidate and curriculum stage, on the
    # stage's classes (the paper trains the supernet on them)
    val_images: int = option(1000, ge=1)  # ours: held-out training images (of the stage's classes) scoring them
    criterion: Literal["l1", "l2"] = "l1"  # ours: which channels a narrowed layer keeps
    max_candidates: int = option(256, ge=1)  # ours: refuse a grid with more candidates within the target


def _engaged(t: dict) -> bool:
    return t["dropped_early"] >= 1 and t["curriculum_stages"] >= 2


@register_method("da-nas", config=DANASConfig, kind="structured", needs=("train", "val"), status="not-meaningful",
                 left_out=LEFT_OUT,
                 smoke={"multipliers": [0.5, 1.0], "stages": 2, "finetune_steps": 1, "val_images": 32},
                 telemetry=Telemetry(
                     keys=("candidates", "curriculum_stages", "dropped_early", "compute_fraction", "first_classes"),
                     engaged=_engaged,
                     what="candidates dropped on the easy classes before the full data was used",
                     knob="give a curriculum of at least two stages (options.curriculum, e.g. [0.4, 1.0]) and more "
                          "than one candidate within the target (options.multipliers / options.stages), with "
                          "options.keep < 1"))
def run(ctx: RunContext, cfg: DANASConfig) -> MethodResult:
    model = ctx.model
    if any(not 0 < f <= 1 for f in cfg.curriculum) or list(cfg.curriculum) != sorted(cfg.curriculum):
        raise ConfigError(f"options.curriculum={list(cfg.curriculum)!r}: fractions of the classes in (0, 1], "
                          f"growing, e.g. [0.4, 1.0]")
    sub = Subnets(model, ctx.example_inputs, criterion=cfg.criterion, ignore=ctx.ignore, seed=ctx.seed)
    configs, widths = stage_candidates(sub.space, cfg.stages, cfg.multipliers)
    inside = [i for i, w in enumerate(widths) if sub.cost(w, ctx.target_kind) <= ctx.target_value + 1e-9]
    if not inside:
        raise ConfigError(f"target={ctx.target!r}: no candidate of options.multipliers={list(cfg.multipliers)} "
                          f"over {cfg.stages} stages meets it; add a smaller multiplier or raise the target")
    if len(inside) > cfg.max_candidates:
        raise ConfigError(f"{len(inside)} candidates meet target={ctx.target!r}, over options.max_candidates="
                          f"{cfg.max_candidates}; use fewer multipliers or stages, or raise max_candidates")
    configs, widths = [configs[i] for i in inside], [widths[i] for i in inside]
    val = first_examples(ctx.val_data, cfg.val_images)
    train = first_batches(ctx.train_data, max(cfg.finetune_steps, 1) * 4)
    n_classes = int(max(int(y.max()) for _, y in train + val)) + 1
    difficulty = class_error(model, val, n_classes, ctx.device)
    sizes = [max(1, round(f * n_classes)) for f in cfg.curriculum]
    classes = class_curriculum(difficulty, sizes)
    images = [sum(len(y) for _, y in class_batches(val, c)) for c in classes]
    scored = []

    def score(s, alive):
        tr = class_batches(train, classes[s])
        ev = FinetuneEvaluator(tr, class_batches(val, classes[s]), steps=cfg.finetune_steps if tr else 0,
                               config=ctx.train_config, device=ctx.device)
        out = []
        for i in alive[0]:
            torch.manual_seed(ctx.seed)
            out.append(ev(sub.pruned_copy(widths[i])))
        scored.append(len(alive[0]))
        return [out]

    plog = progressive_prune([len(configs)], len(classes), score, keep=cfg.keep, final_keep=1)
    best = plog.alive[0][0]
    report = prune_(model, sub.plan(widths[best]))
    full = len(configs) * images[-1]  # every candidate scored once on every class: the ranking it replaces
    spent = sum(n * img for n, img in zip(scored, images))
    telemetry = {"candidates": len(configs), "curriculum_stages": len(classes),
                 "dropped_early": len(plog.dropped[0][0]) if len(classes) >= 2 else 0,
                 "compute_fraction": spent / max(full, 1), "first_classes": classes[0]}
    info = {"chosen": {"multipliers": list(configs[best]), "cost": sub.cost(widths[best], ctx.target_kind)},
            "widths": dict(zip(sub.space.names, widths[best])), "classes": classes, "class_error": difficulty,
            "candidates": [list(c) for c in configs], "progress": plog.as_dict(), "engine_report": report.to_dict()}
    log.info("da-nas: %d candidates, stages %s, chose %s", len(configs), [len(c) for c in classes], configs[best])
    return MethodResult(model=model, info=info, telemetry=telemetry)
