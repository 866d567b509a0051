"""LLM width pruning: whole attention heads (key-value groups) and FFN neurons scored from calibration batches.

Paper: Xinyin Ma, Gongfan Fang, Xinchao Wang, "LLM-Pruner: On the Structural Pruning of Large Language Models",
NeurIPS 2023. https://arxiv.org/abs/2305.11627

LLM-Pruner removes coupled structures of a decoder, never single weights: an attention head together with
its slice of the query/key/value projections and of the output projection, and an FFN neuron together with
its gate/up rows and its column of the down projection. A structure's importance is the first-order Taylor
estimate of the loss change when its weights are set to zero, computed from the gradient of the language-
modelling loss on a handful of calibration sequences: ``|w * dL/dw|`` per weight ("element-wise, first
order"), summed over every weight of the structure. Each pruned layer loses the same fraction of its heads and
of its neurons (the lowest-scoring ones), and a short LoRA tuning on instruction data recovers the rest.

Here the structures are the structural engine's coupled groups inside each decoder layer (under grouped-
query attention one engine channel is a whole key-value group with its query heads, so GQA stays whole by
construction), the scores feed :func:`prunekit.plan_channels` and :func:`prunekit.prune_` (no private surgery;
a Hugging Face config follows the new widths). ``criterion="activation"`` ranks by the L2 norm of the unit's
output over the calibration tokens instead. One fraction for every pruned group is found by bisection so the
model lands within ``macs=``/``params=`` (uniform: a Hugging Face config holds one width per kind). The
optional recovery is ours: ``recovery_steps`` of distillation from the dense model on the training batches.
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..allocate import allocate_to_target, parse_target
from ..api import plan_channels, prune_
from ..criteria.collect import collect
from ..data import first_batches
from ..errors import ConfigError
from ..surgery.hf_config import is_hf_model
from ..surgery.layers import decoder_layers, layer_prefix
from ..train import fit
from ..train.config import method_train_config
from ._config import MethodConfig, option
from ._filter_common import _graph
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["LLMWidthConfig", "width_units", "taylor_scores", "activation_scores", "distill_", "run"]


@dataclass(frozen=True)
class LLMWidthConfig(MethodConfig):
    # sec. 3.2: element-wise first-order |w dL/dw| summed over the group; "activation" (ours): L2 of the unit's output
    criterion: Literal["taylor", "activation"] = "taylor"
    units: Literal["heads", "ffn", "both"] = "both"  # sec. 3.1: heads and FFN neurons are both pruned
    # layers kept whole at the start (paper, LLaMA-7B: layers 0-3 of 32; 0 here for 2-8 layer models)
    skip_first: int = option(0, ge=0)
    skip_last: int = option(0, ge=0)  # layers kept whole at the end (paper, LLaMA-7B: the last 2 of 32)
    # ours: distillation steps from the dense model (the paper tunes LoRA); 0 = off
    recovery_steps: int = option(0, ge=0)
    recovery_lr: float = option(1e-4, gt=0)  # ours: AdamW lr of the recovery (the paper's LoRA lr, sec. 4.1)


def _attention_prefixes(model: nn.Module) -> list[str]:
    return [n + "." for n, m in model.named_modules() if n and type(m).__name__.endswith("Attention")]


def width_units(model: nn.Module, graph, units: str, layers: list[int], stack: str) -> list[dict]:
    """The engine groups of each pruned decoder layer: ``[{"layer", "kind": "heads"|"ffn", "group"}]``.

    A group counts when every member lies inside one decoder layer; it is ``heads`` when its members sit in an
    attention module (one channel = a head, or a key-value group with its query heads), else ``ffn``."""
    attn = _attention_prefixes(model)
    prefixes = {i: layer_prefix(stack, i) for i in layers}
    out = []
    for g in graph.groups:
        hit = [i for i, p in prefixes.items() if all(m.fqn.startswith(p) for m in g.members)]
        if not hit or g.width < 2:
            continue
        kind = "heads" if any(m.fqn.startswith(a) for m in g.members for a in attn) else "ffn"
        if units in (kind, "both"):
            out.append({"layer": hit[0], "kind": kind, "group": g})
    return out


def _per_channel(values: torch.Tensor, member, width: int) -> torch.Tensor:
    """Sum of ``values`` (shaped like the member's tensor) per group channel, over its positions and the rest."""
    return _per_position(values.double().movedim(member.dim, 0).reshape(values.shape[member.dim], -1).sum(1),
                         member, width)


def _per_position(per_pos: torch.Tensor, member, width: int) -> torch.Tensor:
    """``per_pos`` (one value per position of the member's dim) summed per group channel."""
    ch = torch.as_tensor(member.channel)
    out = torch.zeros(width, dtype=torch.float64)
    keep = ch >= 0
    out.index_add_(0, ch[keep], per_pos.double()[keep])
    return out


def taylor_scores(model: nn.Module, groups: list, calib) -> list[np.ndarray]:
    """Per group, per channel: ``sum |w * dL/dw|`` over every parameter member (LLM-Pruner's element-wise
    first-order importance, summed over the structure), the gradient of the loss summed over ``calib``."""
    params = dict(model.named_parameters())
    fqns = sorted({m.fqn for g in groups for m in g.members if m.fqn in params})
    cal = collect(model, calib, param_grads=fqns)
    out = []
    for g in groups:
        s = torch.zeros(g.width, dtype=torch.float64)
        for m in g.members:
            if m.fqn in cal.grads:
                w = params[m.fqn].detach().cpu()
                s += _per_channel((w.double() * cal.grads[m.fqn].double()).abs(), m, g.width)
        out.append(s.numpy())
    return out


def _consumer(model: nn.Module, group):
    """The Linear reading the group's channels (``o_proj``, ``down_proj``, ``fc2``) and its weight member."""
    mods = dict(model.named_modules())
    for m in group.members:
        mod = mods.get(m.fqn.rpartition(".")[0])
        if m.role == "consumer" and m.fqn.endswith(".weight") and m.dim == 1 and isinstance(mod, nn.Linear):
            return m.fqn.rpartition(".")[0], m
    raise ConfigError(f"group {group.name}: no Linear layer reads its channels, so its output norm is undefined; "
                      f"use options.criterion='taylor'")


def activation_scores(model: nn.Module, groups: list, calib) -> list[np.ndarray]:
    """Per group, per channel: the L2 norm of the unit's output over every calibration token (the input of the
    layer that reads it: a head's attention output before ``o_proj``, a neuron's activation before ``down``)."""
    readers = [_consumer(model, g) for g in groups]
    sq: dict = {}

    def on_batch(b):
        for name, xs in b.inputs.items():
            for x in xs:
                v = x.double().reshape(-1, x.shape[-1]).pow(2).sum(0)
                sq[name] = sq[name] + v if name in sq else v

    collect(model, calib, inputs=sorted({n for n, _ in readers}), on_batch=on_batch, keep=False)
    out = []
    for g, (name, m) in zip(groups, readers):
        out.append(_per_position(sq[name], m, g.width).sqrt().numpy())
    return out


def distill_(model: nn.Module, teacher: nn.Module, ctx: RunContext, steps: int, lr: float) -> int:
    """``steps`` AdamW steps of distillation (KL to the dense ``teacher``'s next-token distribution, kd_alpha=1)
    on the first training batches; returns the steps taken."""
    if steps <= 0:
        return 0
    if ctx.train_data is None:
        raise ConfigError(f"options.recovery_steps={steps} needs training batches (RunContext(train_data=loader)); "
                          f"pass them or set recovery_steps=0")
    batches = first_batches(ctx.train_data, steps)
    cfg = method_train_config(ctx, epochs=1, optimizer="adamw", lr=lr, weight_decay=0.0, scheduler="constant",
                              kd_alpha=1.0, kd_temperature=1.0, progress=False)
    res = fit(model, batches, cfg, teacher=teacher.eval())
    return int(res.steps)


def _layout(model: nn.Module, unit: dict) -> dict:
    """Query heads and key-value heads a heads group's layer has now, from its projections' widths."""
    mods = dict(model.named_modules())
    g = unit["group"]
    prods = [m for m in g.members if m.role == "producer" and m.dim == 0 and m.fqn.endswith(".weight")]
    per_channel = {m.fqn: m.size // g.width for m in prods}
    q = max(per_channel, key=per_channel.get)
    k = min(per_channel, key=per_channel.get)
    head_dim, group_size = per_channel[k], per_channel[q] // per_channel[k]
    q_out = mods[q.rpartition(".")[0]].weight.shape[0]
    k_out = mods[k.rpartition(".")[0]].weight.shape[0]
    return {"query_heads": q_out // head_dim, "kv_heads": k_out // head_dim, "group_size": group_size}


@register_method("llm-width", config=LLMWidthConfig, kind="structured", needs=("calib",),
                 status="partial",
                 left_out="the paper's recovery is LoRA tuning on instruction data (Alpaca); ours is an optional "
                          "distillation from the dense model on the training batches (recovery_steps, off by "
                          "default). The paper's channel (hidden-size) strategy is not built: heads and FFN only.",
                 telemetry=Telemetry(
                     keys=("heads_removed", "neurons_removed", "scored_units", "nonzero_scores", "gqa_whole"),
                     engaged=lambda t: t["heads_removed"] + t["neurons_removed"] > 0 and t["nonzero_scores"] > 0,
                     what="calibrated removal of attention heads / FFN neurons",
                     knob="lower the target (macs=/params=) so that units go, and give calibration batches with "
                          "next-token targets (the Taylor score needs a loss gradient)"))
def run(ctx: RunContext, cfg: LLMWidthConfig) -> MethodResult:
    model = ctx.model
    stack, layers = decoder_layers(model, method="llm-width")
    n = len(layers)
    pruned = list(range(cfg.skip_first, n - cfg.skip_last))
    if not pruned:
        raise ConfigError(f"options skip_first={cfg.skip_first}, skip_last={cfg.skip_last} leave none of the {n} "
                          f"decoder layers to prune; lower them (their sum must be below {n})")
    if is_hf_model(model) and len(pruned) < n:
        raise ConfigError(f"options skip_first={cfg.skip_first}, skip_last={cfg.skip_last}: a Hugging Face config "
                          f"holds one head count and one FFN width for every layer, so layers pruned unevenly could "
                          f"not be saved with save_pretrained; set both to 0 for {type(model).__name__}")
    graph = _graph(model, ctx)
    units = width_units(model, graph, cfg.units, pruned, stack)
    if not units:
        raise ConfigError(f"options.units={cfg.units!r}: no prunable {cfg.units} group in layers {pruned} of "
                          f"{stack!r}; choose units='both'")
    groups = [u["group"] for u in units]
    teacher = copy.deepcopy(model) if cfg.recovery_steps else None
    score_fn = taylor_scores if cfg.criterion == "taylor" else activation_scores
    scores = score_fn(model, groups, ctx.calib)
    kind, frac = parse_target(ctx.target)
    cost = graph.macs if kind == "macs" else graph.params
    dense = cost()

    def removal_of(kept: list) -> dict:
        return {g.id: np.sort(np.argsort(s, kind="stable")[:g.width - k]) for g, s, k in zip(groups, scores, kept)}

    widths = [g.width for g in groups]
    try:  # one fraction for every group (fill=False: no group gets a different width)
        kept, ratio = allocate_to_target(widths, scores, lambda k: cost(graph.removed_flat(removal_of(k))),
                                         math.floor(dense * frac), allocation="uniform", fill=False)
    except ConfigError:
        floor = cost(graph.removed_flat(removal_of([1] * len(groups)))) / dense
        how = ("or set options.units='both'" if cfg.units != "both"
               else "(the embeddings and the LM head stay whole)")
        raise ConfigError(f"target={ctx.target!r}: removing all but one unit of every {cfg.units} group in layers "
                          f"{pruned} still keeps {floor:.3f} of the {kind}; ask for more than that {how}") from None
    removal = removal_of(kept)
    chosen = {}
    for g in groups:
        chans = removal[g.id]
        if not len(chans):
            continue
        m = next(m for m in g.members if m.role == "producer" and m.dim == 0 and m.fqn.endswith(".weight"))
        chosen[m.fqn.rpartition(".")[0]] = m.positions(chans).tolist()
    before = [(_layout(model, u) if u["kind"] == "heads" else None) for u in units]
    report = prune_(model, plan_channels(model, ctx.example_inputs, chosen, ignore=list(ctx.ignore))) if chosen \
        else None
    per_layer: dict = {}
    heads_removed = neurons_removed = 0
    gqa_whole = True
    for u, b, g, k in zip(units, before, groups, kept):
        row = per_layer.setdefault(str(u["layer"]), {})
        if u["kind"] == "heads":
            now = _layout(model, u)
            gone = b["query_heads"] - now["query_heads"]
            heads_removed += gone
            gqa_whole &= now["query_heads"] == now["kv_heads"] * b["group_size"]
            row.update({"query_heads_removed": gone, "kv_groups_removed": b["kv_heads"] - now["kv_heads"],
                        "query_heads_kept": now["query_heads"], "group_size": b["group_size"]})
        else:
            neurons_removed += g.width - k
            row.update({"neurons_removed": g.width - k, "neurons_kept": k})
    steps = distill_(model, teacher, ctx, cfg.recovery_steps, cfg.recovery_lr) if teacher is not None else 0
    all_scores = np.concatenate(scores)
    telemetry = {"heads_removed": heads_removed, "neurons_removed": neurons_removed, "scored_units": len(all_scores),
                 "nonzero_scores": int((all_scores > 0).sum()), "gqa_whole": bool(gqa_whole)}
    info = {"criterion": cfg.criterion, "units": cfg.units, "layers_pruned": pruned, "ratio": float(ratio),
            "per_layer": per_layer, "recovery_steps": steps,
            f"kept_{kind}_fraction": cost(graph.removed_flat(removal)) / dense,
            "engine_report": report.to_dict() if report is not None else None}
    return MethodResult(model=model, info=info, telemetry=telemetry)
