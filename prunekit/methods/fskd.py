"""FSKD: recover a pruned network from a few unlabeled images by least-squares 1x1 corrections.

Paper: Tianhong Li, Jianguo Li, Zhuang Liu, Changshui Zhang, "Few Sample Knowledge Distillation for Efficient
Network Compression", CVPR 2020. https://arxiv.org/abs/1812.01839

FSKD repairs a compressed student without training it. The student (here: the network after an L1 filter-norm
cut, no fine-tuning) keeps the teacher's structure at block level, so after each of its layers a linear 1x1
convolution ``Q`` can map the student's features onto the teacher's features at the same place. With a handful
of unlabeled images, each ``Q`` is the least-squares solution of ``min ||Q s - t||^2``; the blocks are solved
one after another, each on features the already-corrected earlier blocks produce (block-coordinate descent).
Because ``Q`` is linear and sits right after a convolution, before its nonlinearity, it folds into that
convolution (``W' = Q W``, ``b' = Q b``) and the repaired student costs exactly what the pruned one cost. No
labels and no SGD are used.

Here the cut is :func:`prunekit.plan` with the ``l1`` criterion on the producing filters (the entry: L1-norm
filter pruning, the same fraction per layer), the teacher is a frozen copy of the model before the cut
(:class:`prunekit.criteria.teacher.Teacher`), a correction is fitted after every Linear / Conv2d layer whose
input channels were cut, against the teacher's output at the channels the student kept, and
:func:`prunekit.criteria.correction.correct_layers_` runs the block-coordinate sweep in forward order.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from ..api import plan, prune_
from ..criteria.correction import correctable, correct_layers_
from ..criteria.teacher import Teacher, kept_output_channels
from ..data import first_examples, per_class_batches
from ..errors import ConfigError
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["FSKDConfig", "run"]


@dataclass(frozen=True)
class FSKDConfig(MethodConfig):
    images: int = option(100, ge=0)  # unlabeled images Q is fitted on (entry's check: 100); 0 = no correction
    per_class: int | None = option(None, ge=1)  # ours: limited-data mode, this many training images of every
    # class (train_data) instead of the first `images` calibration images (issue 19: at most 10 per class)
    criterion: Literal["l1", "l2", "random"] = "l1"  # the cut FSKD repairs: L1 filter norm (entry, sec. 4.2)
    allocation: Literal["uniform", "global"] = "uniform"  # the same fraction of every layer (entry's check)
    ridge: float = option(0.0, ge=0)  # 0 = plain least squares (sec. 3.3); > 0: ridge relative to mean s^2


def _readers(p, mods: dict) -> list:
    """Layers whose input channels the plan cuts (their outputs differ from the teacher's), in model order."""
    cut = {m["fqn"].rpartition(".")[0] for g in p.groups for m in g.members
           if m["fqn"].endswith(".weight") and m["dim"] == 1 and m["indices"] and m.get("role") == "consumer"}
    return [f for f in mods if f in cut and correctable(mods[f])]


@register_method("fskd", config=FSKDConfig, kind="structured", needs=("calib",), smoke={"images": 8},
                 telemetry=Telemetry(
                     keys=("images", "layers_corrected", "error_before", "error_after", "teacher_mb"),
                     engaged=lambda t: t["layers_corrected"] >= 1 and t["error_after"] < t["error_before"],
                     what="least-squares 1x1 corrections of the pruned layers toward the teacher's features",
                     knob="set options.images >= 1 (FSKD fits its corrections on a few unlabeled images) and a "
                          "target that cuts channels read by a Linear / Conv2d layer"))
def run(ctx: RunContext, cfg: FSKDConfig) -> MethodResult:
    model = ctx.model
    if cfg.per_class is not None:
        if ctx.train_data is None:
            raise ConfigError(f"method 'fskd': options.per_class={cfg.per_class} picks images of every class from "
                              f"train_data, but train_data=None; pass RunContext(train_data=...) or drop per_class")
        data = per_class_batches(ctx.train_data, cfg.per_class)
    else:
        data = first_examples(ctx.calib, cfg.images) if cfg.images else []
    n_images = sum(len(x) for x, _ in data)
    teacher = Teacher(model)
    p = plan(model, ctx.example_inputs, target=ctx.target, criterion=cfg.criterion, reduce="producer",
             allocation=cfg.allocation, ignore=list(ctx.ignore), seed=ctx.seed)
    mods = dict(model.named_modules())
    readers = _readers(p, mods)
    targets = teacher.targets(data, kept_output_channels(p, readers)) if (data and readers) else {}
    report = prune_(model, p)
    errors = correct_layers_(model, targets, data, ridge=cfg.ridge) if targets else {}
    corrected = [e for e in errors.values() if e["error_after"] < e["error_before"]]
    mean = lambda k: float(sum(e[k] for e in errors.values()) / len(errors)) if errors else 0.0  # noqa: E731
    telemetry = {"images": n_images, "layers_corrected": len(corrected), "error_before": mean("error_before"),
                 "error_after": mean("error_after"), "teacher_mb": teacher.memory_bytes / 2 ** 20}
    info = {"criterion": cfg.criterion, "allocation": cfg.allocation, "per_layer_error": errors,
            "engine_report": report.to_dict()}
    del teacher
    return MethodResult(model=model, info=info, telemetry=telemetry)
