"""A learnable choice among registered weight criteria, sampled with the Gumbel-softmax (LFPC's sampler).

A :class:`CriterionChoice` holds one logit per candidate criterion (``"l1"``, ``"l2"``, ``"fpgm"``, ... any
registered criterion that scores filters from their weights alone). For a layer's weight and a pruning rate
each criterion gives a 0/1 keep-mask over the filters; a Gumbel-softmax sample ``w`` of the choice mixes them
into one soft mask ``sum_k w_k * mask_k``, so a loss computed with the mixed mask is differentiable with
respect to the logits (the masks themselves are constants). ``probs()`` is the learned distribution and
``chosen()`` its most likely criterion.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ._base import ChannelView, get_criterion

__all__ = ["CriterionChoice", "filter_scores", "keep_mask", "gumbel_softmax"]


def filter_scores(weight: torch.Tensor, criterion: str) -> torch.Tensor:
    """One score per filter (dim 0 of ``weight``) from a registered criterion that needs no data; higher keeps."""
    spec = get_criterion(criterion)
    if spec.needs:
        raise ConfigError(f"criterion={criterion!r} needs {list(spec.needs)} from calibration data; a learned "
                          f"choice scores weights alone: choose criteria such as 'l1', 'l2', 'fpgm'")
    w = weight.detach().reshape(weight.shape[0], -1)
    view = ChannelView(fqn="", dim=0, role="producer", channels=np.arange(w.shape[0]), weight=w)
    return torch.as_tensor(spec.fn(view)).detach().float().reshape(-1).cpu()


def keep_mask(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Float mask: 0 at the ``n_prune`` lowest scores (ties by index), 1 elsewhere.

    Example:
        >>> keep_mask(torch.tensor([3.0, 1.0, 2.0, 1.0]), 2).tolist()
        [1.0, 0.0, 1.0, 0.0]
    """
    m = torch.ones(len(scores))
    if n_prune > 0:
        m[torch.sort(scores.float(), stable=True).indices[:n_prune]] = 0.0
    return m


def gumbel_softmax(logits: torch.Tensor, tau: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A relaxed one-hot sample ``softmax((logits + g) / tau)`` with Gumbel noise ``g = -log(-log u)``."""
    u = torch.rand(logits.shape, generator=generator).clamp(1e-10, 1 - 1e-10).to(logits.device)
    return torch.softmax((logits - torch.log(-torch.log(u))) / tau, dim=-1)


class CriterionChoice:
    """Learnable distribution over ``criteria`` for one layer; ``logits`` is a leaf tensor to optimise.

    Example:
        >>> c = CriterionChoice(("l1", "l2", "fpgm"))
        >>> [round(p, 3) for p in c.probs().tolist()], round(c.entropy(), 4)  # uniform at the start
        ([0.333, 0.333, 0.333], 1.0986)
    """

    def __init__(self, criteria: Sequence[str], init: Sequence[float] | None = None):
        if len(criteria) < 2:
            raise ConfigError(f"criteria={list(criteria)!r}: a choice needs at least two criteria")
        for c in criteria:
            get_criterion(c)  # unknown names refused with the closest one
        self.criteria = tuple(criteria)
        self.logits = torch.tensor(list(init) if init is not None else [0.0] * len(criteria), requires_grad=True)

    def probs(self) -> torch.Tensor:
        return torch.softmax(self.logits.detach(), 0)

    def entropy(self) -> float:
        p = self.probs()
        return float(-(p * torch.log(p.clamp_min(1e-30))).sum())

    def chosen(self) -> str:
        return self.criteria[int(self.probs().argmax())]

    def masks(self, weight: torch.Tensor, n_prune: int) -> torch.Tensor:
        """``[n_criteria, n_filters]``: each criterion's keep-mask of ``weight``'s filters at ``n_prune``."""
        return torch.stack([keep_mask(filter_scores(weight, c), n_prune) for c in self.criteria])

    def mixed(self, masks: torch.Tensor, tau: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """The Gumbel-softmax mix ``sum_k w_k * masks[k]`` (differentiable in ``logits``)."""
        w = gumbel_softmax(self.logits, tau, generator)
        return (w[:, None] * masks.to(w)).sum(0)
