"""Wanda: pruning by weights and activations.

Paper: "A Simple and Effective Pruning Approach for Large Language Models", Mingjie Sun, Zhuang Liu, Anna
Bair, J. Zico Kolter. ICLR 2024. https://arxiv.org/abs/2306.11695

Large language models have a few input features of very large magnitude, so a small weight that multiplies
such a feature can matter more than a large weight on a quiet one. Wanda scores every weight by its
magnitude times the l2 norm of its input feature over the calibration tokens, S_ij = |W_ij| * ||X_j||_2, and
removes the lowest scores within each output row (not across the layer), with no weight update and no
retraining. For N:M sparsity the N highest scores of every M consecutive input weights of a row are kept.
Blocks are pruned in order, each calibrated on the outputs of the blocks already pruned before it
(:mod:`prunekit.criteria.sequential`). The embeddings and the LM head stay dense, as in the paper. The
paper calibrates on 128 segments of 2048 tokens of C4; here the calibration set is whatever ``ctx.calib``
holds (``prunekit run --calib-batches N``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..criteria.sequential import linear_weight, sequential_calibrate
from ._config import MethodConfig
from ._llm import keep_mask, layer_sparsity_telemetry, llm_layers, resolve_pattern
from ._registry import MethodResult, RunContext, Telemetry, register_method

__all__ = ["WandaConfig", "wanda_scores", "run"]


@dataclass(frozen=True)
class WandaConfig(MethodConfig):
    scope: Literal["row", "layer"] = "row"  # comparison group (paper sec. 3: per output row; per layer in its ablation)
    pattern: str = "element"  # single weights, or N:M along the inputs ("2:4", "4:8": the paper's N:M results)


def wanda_scores(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """``S_ij = |W_ij| * ||X_j||_2`` for a ``[out, in]`` weight and the ``[in]`` input-feature norms.

    Example:
        >>> wanda_scores(torch.tensor([[1.0, -2.0], [3.0, 0.5]]), torch.tensor([4.0, 1.0])).tolist()
        [[4.0, 2.0], [12.0, 0.5]]
    """
    return weight.detach().abs().float() * input_norms.float().reshape(1, -1)


def _engaged(t: dict) -> bool:
    return t["sparsity"] > 0 and t["changed_vs_magnitude"] > 0


@register_method("wanda", config=WandaConfig, kind="unstructured", needs=("calib",),
                 telemetry=Telemetry(keys=("sparsity", "changed_vs_magnitude"), engaged=_engaged,
                                     what="the activation norms changing which weights are pruned (the mask differs "
                                          "from plain |W| in the same comparison group)",
                                     knob="the input features had equal norms: pass calibration batches of real "
                                          "text (calib, prunekit run --calib-batches N) and a target above 0"))
def run(ctx: RunContext, cfg: WandaConfig) -> MethodResult:
    """Block by block: score |W|·||X|| on the pruned blocks' outputs, zero the lowest per row (or N:M)."""
    pattern, sparsity = resolve_pattern(ctx, cfg.pattern, "wanda")
    layers = llm_layers(ctx.model, ctx.ignore, pattern, "wanda")
    masks, changed, pruned = {}, 0, 0

    def prune_block(i, name, stats):
        nonlocal changed, pruned
        for fqn, s in stats.items():
            w = linear_weight(layers[f"{fqn}.weight"])
            keep = keep_mask(wanda_scores(w, s.norms), sparsity, pattern, cfg.scope)
            plain = keep_mask(w.detach().abs().float(), sparsity, pattern, cfg.scope)
            changed += int((~keep & plain).sum())
            pruned += int((~keep).sum())
            with torch.no_grad():
                w.mul_(keep.to(w.dtype))
            masks[f"{fqn}.weight"] = keep

    rep = sequential_calibrate(ctx.model, ctx.calib, prune_block,
                               layers=lambda f: f"{f}.weight" in layers)
    tel = {**layer_sparsity_telemetry(masks), "changed_vs_magnitude": round(changed / max(pruned, 1), 6)}
    return MethodResult(ctx.model, info={"sparsity": tel["sparsity"], "pattern": cfg.pattern,
                                         "blocks": rep.blocks, "calib_batches": rep.batches,
                                         "block_seconds": [round(s, 4) for s in rep.seconds],
                                         "block_cpu_seconds": [round(s, 4) for s in rep.cpu_seconds]}, telemetry=tel)
