"""Shared pieces of the one-shot language-model pruners (magnitude-llm, wanda, sparsegpt).

Which layers they prune (the Linear layers inside the decoder blocks: embeddings, final norm and LM head stay
dense, as in the SparseGPT and Wanda papers), the pattern and target checks they all make before touching the
model, the per-row / per-layer / N:M selection of the weights to keep, and the telemetry of what was cut.
"""
from __future__ import annotations

import torch
from torch import nn

from ..criteria.sequential import block_linears, decoder_blocks, linear_weight
from ..errors import ConfigError
from ..masks import get_pattern, prunable_weights
from ..masks.patterns import NMPattern
from ._registry import RunContext

__all__ = ["resolve_pattern", "llm_layers", "keep_mask", "layer_sparsity_telemetry"]


def resolve_pattern(ctx: RunContext, pattern: str, method: str) -> tuple[NMPattern | None, float]:
    """``(N:M pattern or None, sparsity)``; an N:M pattern implies its sparsity and refuses another target."""
    if pattern == "element":
        return None, ctx.target_value
    p = get_pattern(pattern)
    if not isinstance(p, NMPattern):
        raise ConfigError(f"options.pattern={pattern!r}: {method} prunes single weights ('element') or N:M groups "
                          f"along the inputs ('2:4', '4:8'); choose one of those")
    if abs(p.fixed_sparsity - ctx.target_value) > 1e-9:
        raise ConfigError(f"target={ctx.target!r} with options.pattern={pattern!r}: that pattern's sparsity is "
                          f"{p.fixed_sparsity:g}; use target='sparsity={p.fixed_sparsity:g}'")
    return p, p.fixed_sparsity


def llm_layers(model: nn.Module, ignore, pattern: NMPattern | None, method: str) -> dict[str, nn.Module]:
    """``{weight fqn: layer}`` of the decoder blocks' linear layers (``nn.Linear`` or GPT-2's ``Conv1D``;
    :func:`~prunekit.criteria.sequential.linear_weight` gives the ``[out, in]`` weight) minus ``ignore``,
    checked against the pattern before anything changes (a ``ConfigError`` for a non-language model or an
    indivisible layer)."""
    path, blocks = decoder_blocks(model)
    allowed = set(prunable_weights(model, ignore, recurrent=False, conv1d=True))
    layers = {}
    for i, block in enumerate(blocks):
        for fqn, mod in block_linears(block, f"{path}.{i}").items():
            if f"{fqn}.weight" in allowed:
                layers[f"{fqn}.weight"] = mod
    if not layers:
        raise ConfigError(f"ignore={list(ignore)!r} leaves no Linear layer in the decoder blocks ({path}) for {method} "
                          f"to prune; ignore fewer layers")
    if pattern is not None:
        inputs = {f: linear_weight(m).shape[1] for f, m in layers.items()}
        bad = {f.rpartition(".")[0]: n for f, n in inputs.items() if n % pattern.m}
        if bad:
            shown = ", ".join(f"{f} ({n} inputs)" for f, n in bad.items())
            raise ConfigError(f"options.pattern={pattern.spec!r} groups every {pattern.m} consecutive inputs of a row, "
                              f"but the inputs of {shown} are not divisible by {pattern.m}: leave those layers dense "
                              f"with ignore={list(bad)!r} or choose an M that divides them")
    return layers


def keep_mask(scores: torch.Tensor, sparsity: float, pattern: NMPattern | None, scope: str) -> torch.Tensor:
    """Boolean keep-mask of a ``[out, in]`` score matrix: the lowest ``sparsity`` of the scores pruned within
    each output row (``scope="row"``) or over the whole layer (``"layer"``); an N:M pattern keeps the N
    highest of every M consecutive inputs of each row.

    Example:
        >>> keep_mask(torch.tensor([[4., 1., 3., 2.], [1., 2., 3., 4.]]), 0.5, None, "row").int().tolist()
        [[1, 0, 1, 0], [0, 0, 1, 1]]
        >>> keep_mask(torch.tensor([[4., 3., 2., 1.], [9., 8., 7., 6.]]), 0.5, None, "layer").int().tolist()
        [[0, 0, 0, 0], [1, 1, 1, 1]]
    """
    scores = scores.contiguous()  # a transposed view (a Conv1D weight) would give the mask its strides
    if pattern is not None:
        return pattern.select_fixed(scores)
    keep = torch.ones_like(scores, dtype=torch.bool)
    if scope == "row":
        k = int(scores.shape[1] * sparsity)  # per row (Wanda's reference: int(cols * sparsity) lowest)
        if k:
            keep.scatter_(1, torch.topk(scores, k, dim=1, largest=False).indices, False)
    else:
        k = int(scores.numel() * sparsity)
        if k:
            keep.view(-1)[torch.topk(scores.flatten(), k, largest=False).indices] = False
    return keep


def layer_sparsity_telemetry(masks: dict[str, torch.Tensor]) -> dict:
    """``layer_sparsity`` (fraction of zeros per pruned layer) and ``sparsity`` (over those layers)."""
    per = {f: round(1 - float(m.float().mean()), 6) for f, m in masks.items()}
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return {"layer_sparsity": per, "sparsity": round(1 - kept / max(total, 1), 6)}
