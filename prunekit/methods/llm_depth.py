"""LLM depth pruning: remove the decoder layers whose output is most like their input (Block Influence).

Paper: Xin Men, Mingyu Xu, Qingyu Zhang, Bingning Wang, Hongyu Lin, Yaojie Lu, Xianpei Han, Weipeng Chen,
"ShortGPT: Layers in Large Language Models are More Redundant Than You Expect", arXiv 2024.
https://arxiv.org/abs/2403.03853

ShortGPT observes that many layers of a trained decoder barely change the hidden state that passes through
them. It measures each layer's Block Influence on calibration text, ``BI_i = 1 - mean_t cos(x_i,t, x_i+1,t)``
(the cosine between the hidden state of token t entering and leaving layer i, averaged over every token), and
deletes the layers of lowest influence outright: the scores are computed once on the dense model, no
re-scoring after each removal, no retraining.

Here the layers go for real (:func:`prunekit.surgery.layers.remove_layers_`: the entry leaves the module list;
a Hugging Face config's ``num_hidden_layers`` and each remaining attention's ``layer_idx`` follow, so caches
and ``save_pretrained`` stay right). Layers go in increasing influence until the kept MACs/params meet the
target, or exactly ``options.layers`` of them. The optional recovery is ours (distillation from the dense
model on the training batches, off by default; the paper reports results without retraining).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..allocate import parse_target
from ..criteria.collect import collect
from ..errors import ConfigError
from ..measure import count_macs
from ..surgery.layers import decoder_layers, layer_prefix, remove_layers_
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method
from .llm_width import distill_

log = logging.getLogger(__name__)

__all__ = ["LLMDepthConfig", "block_influence", "layer_costs", "layers_to_remove", "run"]


@dataclass(frozen=True)
class LLMDepthConfig(MethodConfig):
    # remove exactly this many layers, target ignored (sec. 4 removes a fixed count); 0 = as many as the target needs
    layers: int = option(0, ge=0)
    recovery_steps: int = option(0, ge=0)  # ours: distillation steps from the dense model; 0 = off (no retraining)
    recovery_lr: float = option(1e-4, gt=0)  # ours: AdamW lr of the recovery


def _hidden(x):
    """The hidden-state tensor of a layer's input args or output (a tensor, or the first of a tuple)."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
        return x[0]
    return None


def block_influence(model: nn.Module, calib) -> list[float]:
    """``BI_i = 1 - mean over calibration tokens of cos(input of layer i, output of layer i)`` per decoder layer.

    Example:
        >>> import prunekit as pk, torch
        >>> m = pk.models.create("gpt-tiny", num_classes=16, in_channels=1, input_size=4)
        >>> len(block_influence(m, [(torch.randint(0, 16, (2, 4)), None)]))
        2
    """
    stack, layers = decoder_layers(model, method="block_influence")
    names = [layer_prefix(stack, i)[:-1] for i in range(len(layers))]
    sums = [0.0] * len(names)
    counts = [0] * len(names)
    pending: dict = {}
    index = {n: i for i, n in enumerate(names)}

    def on_input(name, args):
        pending[name] = _hidden(args)

    def on_output(name, args, out):
        x, y = pending.pop(name, None), _hidden(out)
        if x is None or y is None or x.shape != y.shape:
            raise ConfigError(f"layer {name!r}: its output is not a hidden state of its input's shape, so its Block "
                              f"Influence is undefined")
        cos = F.cosine_similarity(x.detach().double().flatten(0, -2), y.detach().double().flatten(0, -2), dim=-1)
        i = index[name]
        sums[i] += float(cos.sum())
        counts[i] += cos.numel()

    collect(model, calib, watch=names, on_input=on_input, on_output=on_output)
    return [1.0 - s / c for s, c in zip(sums, counts)]


def layer_costs(model: nn.Module, example_inputs, kind: str) -> tuple[list[int], int]:
    """``(cost of each decoder layer, cost of the model)`` in MACs (the engine's counter) or parameters."""
    stack, layers = decoder_layers(model, method="layer_costs")
    if kind == "macs":
        mc = count_macs(model, example_inputs)
        per = [sum(v for f, v in mc.per_module.items() if f.startswith(layer_prefix(stack, i)))
               for i in range(len(layers))]
        return per, int(mc.total)
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return [sum(p.numel() for p in layer.parameters()) for layer in layers], int(total)


def layers_to_remove(influence: list[float], costs: list[int], total: int, frac: float | None = None,
                     count: int | None = None) -> list[int]:
    """The layers of lowest influence (ties: the later layer first) until ``total - removed <= frac * total``,
    or exactly ``count`` of them; at least one layer always stays.

    Example:
        >>> layers_to_remove([0.3, 0.0, 0.2, 0.5], [10, 10, 10, 10], 50, frac=0.7)
        [1, 2]
    """
    order = sorted(range(len(influence)), key=lambda i: (influence[i], -i))
    if count is not None:
        return sorted(order[:count])
    out, kept = [], total
    for i in order[:-1]:
        if kept <= frac * total:
            break
        out.append(i)
        kept -= costs[i]
    return sorted(out)


@register_method("llm-depth", config=LLMDepthConfig, kind="structured", needs=("calib",),
                 telemetry=Telemetry(
                     keys=("influence", "removed"), engaged=lambda t: len(t["removed"]) > 0,
                     what="removal of the decoder layers of lowest Block Influence",
                     knob="lower the target (macs=/params=) below the cost of the model without one layer, or set "
                          "options.layers=N"))
def run(ctx: RunContext, cfg: LLMDepthConfig) -> MethodResult:
    model = ctx.model
    stack, layers = decoder_layers(model, method="llm-depth")
    n = len(layers)
    if cfg.layers >= n:
        raise ConfigError(f"options.layers={cfg.layers} would remove all {n} decoder layers of {stack!r}; give at "
                          f"most {n - 1}")
    kind, frac = parse_target(ctx.target)
    costs, total = layer_costs(model, ctx.example_inputs, kind)
    if not cfg.layers:
        best = (total - sum(sorted(costs)[1:])) / total if n > 1 else 1.0
        if best > frac:
            raise ConfigError(f"target={ctx.target!r}: removing all but one of the {n} decoder layers still keeps "
                              f"{best:.3f} of the {kind} (embeddings and head stay); ask for more than that, or "
                              f"set options.layers=N")
    influence = block_influence(model, ctx.calib)
    removed = layers_to_remove(influence, costs, total, frac, cfg.layers or None)
    teacher = copy.deepcopy(model) if cfg.recovery_steps and removed else None
    change = remove_layers_(model, removed) if removed else {"config_changes": {}, "layers_after": n}
    steps = distill_(model, teacher, ctx, cfg.recovery_steps, cfg.recovery_lr) if teacher is not None else 0
    kept = total - sum(costs[i] for i in removed)
    info = {"influence": influence, "removed": removed, "layers_before": n, "layers_after": change["layers_after"],
            f"kept_{kind}_fraction": kept / total, "config_changes": change["config_changes"],
            "recovery_steps": steps, "target_used": not cfg.layers}
    return MethodResult(model=model, info=info, telemetry={"influence": [round(v, 6) for v in influence],
                                                           "removed": removed})
