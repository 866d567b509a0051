"""Perplexity of a language model: exp of the mean next-token cross-entropy over every predicted token.

Tokens are weighted equally whatever the batch they come in (a batch of shorter blocks weighs less), and
targets equal to ``ignore_index`` are not counted. A model may return logits ``[B, T, V]`` or an object with
``.logits`` (Hugging Face) or a tuple whose first item is the logits.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError

__all__ = ["perplexity"]


@torch.no_grad()
def perplexity(model: nn.Module, data: Iterable, *, device: str | torch.device = "cpu",
               ignore_index: int = -100) -> dict[str, float]:
    """``{"perplexity", "nll", "tokens"}`` of ``model`` on ``data`` (``(inputs [B, T], targets [B, T])``
    batches of token ids); the model's train/eval mode is kept.

    Example:
        >>> class Uniform(nn.Module):  # every next token equally likely among 8: perplexity 8
        ...     def forward(self, x):
        ...         return torch.zeros(*x.shape, 8)
        >>> x = torch.zeros(2, 5, dtype=torch.long)
        >>> round(perplexity(Uniform(), [(x, x)])["perplexity"], 4)
        8.0
    """
    was_training = model.training
    model.eval()
    nll, tokens = 0.0, 0
    try:
        for inputs, targets in data:
            if not (torch.is_tensor(targets) and targets.dim() == 2 and not targets.is_floating_point()):
                raise ConfigError("perplexity: data must give (inputs, targets) with targets of shape [batch, "
                                  f"tokens] holding token ids, got {getattr(targets, 'shape', type(targets))}; "
                                  "use a text data set such as 'text:python-docs'")
            out = model(inputs.to(device))
            logits = out.logits if hasattr(out, "logits") else out[0] if isinstance(out, (tuple, list)) else out
            targets = targets.to(device)
            nll += float(F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), reduction="sum",
                                         ignore_index=ignore_index))
            tokens += int((targets != ignore_index).sum())
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ConfigError("perplexity: data gave no target token; pass non-empty (inputs, targets) batches")
    mean = nll / tokens
    return {"perplexity": math.exp(min(mean, 700.0)), "nll": mean, "tokens": tokens}
