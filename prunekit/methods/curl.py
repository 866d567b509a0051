"""CURL: channels scored by the KL divergence of the network's output when each is removed, residual ones included.

Paper: Jian-Hao Luo, Jianxin Wu, "Neural Network Pruning with Residual-Connections and Limited-Data", CVPR 2020.
https://arxiv.org/abs/1911.08114

CURL asks of every channel how much the whole network's prediction changes without it. A channel is removed by
setting the scale and shift of its BatchNorm to zero, the masked network is run on a small proxy set, and the
channel's importance is the KL divergence between the dense network's softmax output and the masked one's,
averaged over the proxy images. Channels inside a residual block are scored one at a time; a channel of the
residual stream (the sum every block of a stage adds to, fed also by the stage's shortcut) is scored by masking
it in every BatchNorm that writes into that stream at once, so the whole "highway" channel is judged and then
removed as one. All channels are ranked together and the least important removed until the FLOPs target is met.
Because the paper targets settings with little data, the pruned network is then fine-tuned on a small number of
training images with knowledge distillation from the dense network.

Here the channel groups are the engine's (:func:`~._filter_common.filter_groups`): a group tied by a residual
sum lists every BatchNorm of the stream, so masking a channel in all of them is the paper's highway mask; a
group without a BatchNorm is masked by zeroing its producing filters (ours). The cut is the global ranking of
:func:`~._filter_common.cut_to_target`. The fine-tune is :func:`prunekit.train.fit` with ``kd_alpha`` and the
dense copy as teacher on the first ``finetune_images`` training images. Not reproduced: the paper's expansion
of the small data set with mixup-style generated images and its label-refinement stage.

Telemetry: channels scored (one masked forward each), residual-stream channels among them, the largest and the
median KL score, and the distillation steps taken. The mechanism engaged when some channel's removal changed
the output distribution (largest KL > 0).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data import first_examples
from ..train import fit
from ..train.config import method_train_config
from ..train.loop import output_logits
from ._config import MethodConfig, option
from ._filter_common import cut_to_target, filter_groups, select_to_target
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["CURLConfig", "kl_scores", "run"]


@dataclass(frozen=True)
class CURLConfig(MethodConfig):
    proxy_images: int = option(256, ge=1)  # images the KL score averages over (entry's check: 256; reference
    # generate_mask.py: one batch of proxy_dataset_size images)
    residual: bool = True  # score and prune residual-stream channels too (paper sec. 3.2); False leaves them whole
    finetune_images: int = option(1000, ge=0)  # limited-data fine-tune on this many training images (entry: 1000)
    finetune_epochs: int = option(5, ge=0)  # epochs of that fine-tune (entry's check: 5); 0 = none
    kd_alpha: float = option(0.9, gt=0, le=1)  # ours: weight of the distillation term (the paper's weighting
    # was not re-verified; the temperature is the train config's kd_temperature)


@torch.no_grad()
def _log_probs(model: nn.Module, batches) -> torch.Tensor:
    return torch.cat([F.log_softmax(output_logits(model(x)).double(), -1) for x, _ in batches])


@torch.no_grad()
def kl_scores(model: nn.Module, groups, batches) -> dict[str, torch.Tensor]:
    """``{group key: KL per channel}``: mean over ``batches`` of ``KL(p_dense || p_masked)`` where channel ``c`` is
    masked by zeroing gamma and beta in every BatchNorm of its group (its producing filters when it has none).

    The model runs in eval mode and is left exactly as it was.
    """
    mods = dict(model.named_modules())
    was = model.training
    model.eval()
    ref = _log_probs(model, batches)
    p = ref.exp()
    out = {}
    try:
        for g in groups:
            tensors = ([t for b in g.bns for t in (mods[b].weight, mods[b].bias)] if g.bns else
                       [t for c in g.convs for t in (mods[c].weight, mods[c].bias) if t is not None])
            scores = torch.zeros(g.width, dtype=torch.float64)
            for c in range(g.width):
                saved = [t[c].clone() for t in tensors]
                for t in tensors:
                    t[c] = 0
                q = _log_probs(model, batches)
                for t, s in zip(tensors, saved):
                    t[c] = s
                scores[c] = (p * (ref - q)).sum(-1).mean()
            out[g.key] = scores
    finally:
        model.train(was)
    return out


@register_method(
    "curl", config=CURLConfig, kind="structured", needs=("calib", "train"), smoke={"proxy_images": 8,
                                                                                   "finetune_images": 16},
    status="partial", left_out=(
        "the paper's data expansion (mixup-style generated images, expand_dataset.py) and its label-refinement "
        "stage; the distillation fine-tune runs on the plain small subset"),
    telemetry=Telemetry(
        keys=("channels_scored", "residual_channels_scored", "kl_max", "kl_median", "kd_steps"),
        engaged=lambda t: t["channels_scored"] >= 1 and t["kl_max"] > 0,
        what="KL-divergence scores of the masked network's output against the dense one's",
        knob="raise options.proxy_images (every mask left the proxy outputs unchanged) or prune a model whose "
             "output depends on its channels"))
def run(ctx: RunContext, cfg: CURLConfig) -> MethodResult:
    model = ctx.model
    proxy = first_examples(ctx.calib, cfg.proxy_images)
    groups = [g for g in filter_groups(model, ctx) if cfg.residual or len(g.convs) <= 1]
    teacher = copy.deepcopy(model).eval() if cfg.finetune_epochs and cfg.finetune_images else None
    scores = kl_scores(model, groups, proxy)
    removed, _ = select_to_target(model, ctx, {k: v.float() for k, v in scores.items()}, "global")
    report = cut_to_target(model, ctx, {k: v.float() for k, v in scores.items()}, allocation="global")
    kd_steps = 0
    if teacher is not None:
        data = first_examples(ctx.train_data, cfg.finetune_images)
        hist = fit(model, data, method_train_config(ctx, epochs=cfg.finetune_epochs, kd_alpha=cfg.kd_alpha),
                   teacher=teacher)
        kd_steps = len(data) * cfg.finetune_epochs
        del teacher, hist
    allkl = torch.cat(list(scores.values())) if scores else torch.zeros(1, dtype=torch.float64)
    residual = sum(g.width for g in groups if len(g.convs) > 1)
    telemetry = {"channels_scored": int(sum(g.width for g in groups)), "residual_channels_scored": int(residual),
                 "kl_max": float(allkl.max()), "kl_median": float(allkl.median()), "kd_steps": kd_steps}
    info = {"proxy_images": sum(len(x) for x, _ in proxy), "scores": {k: v.tolist() for k, v in scores.items()},
            "removed": {k: [int(i) for i in v] for k, v in removed.items()},
            **report}
    return MethodResult(model=model, telemetry=telemetry, info=info)
