"""Magnitude pruning of a language model's decoder layers (the baseline of Wanda and SparseGPT).

Papers: "A Simple and Effective Pruning Approach for Large Language Models" (Wanda), Mingjie Sun, Zhuang Liu,
Anna Bair, J. Zico Kolter. ICLR 2024. https://arxiv.org/abs/2306.11695 — and "SparseGPT: Massive Language
Models Can Be Accurately Pruned in One-Shot", Elias Frantar, Dan Alistarh. ICML 2023.
https://arxiv.org/abs/2301.00774

Both papers compare against the same data-free baseline: in every Linear layer of the decoder blocks, the
weights of smallest absolute value are set to zero, ranked within the layer (the baseline of both papers'
tables) or within each output row (the comparison group Wanda found to matter, in its ablation). N:M
keeps the N largest of every M consecutive input weights of a row. The embeddings and the LM head stay
dense, as in the papers; nothing is recalibrated or updated, so no calibration data is needed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..criteria.sequential import linear_weight
from ._config import MethodConfig
from ._llm import keep_mask, layer_sparsity_telemetry, llm_layers, resolve_pattern
from ._registry import MethodResult, RunContext, Telemetry, register_method

__all__ = ["MagnitudeLLMConfig", "run"]


@dataclass(frozen=True)
class MagnitudeLLMConfig(MethodConfig):
    # comparison group of |W|: per layer in both papers' baseline; per output row in Wanda's comparison-group ablation
    scope: Literal["layer", "row"] = "layer"
    pattern: str = "element"  # single weights, or N:M along the inputs ("2:4", "4:8": both papers' N:M runs)


@register_method("magnitude-llm", config=MagnitudeLLMConfig, kind="unstructured",
                 telemetry=Telemetry(keys=("sparsity",), engaged=lambda t: t["sparsity"] > 0,
                                     what="weights of the decoder layers set to zero",
                                     knob="raise the target (target='sparsity=0.5') or use options.pattern='2:4'"))
def run(ctx: RunContext, cfg: MagnitudeLLMConfig) -> MethodResult:
    """Zero the smallest |W| of every decoder-block Linear layer (per layer, per row or N:M)."""
    pattern, sparsity = resolve_pattern(ctx, cfg.pattern, "magnitude-llm")
    layers = llm_layers(ctx.model, ctx.ignore, pattern, "magnitude-llm")
    masks = {}
    with torch.no_grad():
        for fqn, mod in layers.items():
            w = linear_weight(mod)
            masks[fqn] = keep_mask(w.detach().abs().float(), sparsity, pattern, cfg.scope)
            w.mul_(masks[fqn].to(w.dtype))
    tel = layer_sparsity_telemetry(masks)
    return MethodResult(ctx.model, info={"sparsity": tel["sparsity"], "pattern": cfg.pattern, "layers": len(masks)},
                        telemetry=tel)
