"""The one k-means of prunekit: Lloyd's algorithm on rows of a matrix.

Two users, two seedings: Deep Compression's weight sharing clusters the surviving weights of a layer (1-D)
with centroids initialised evenly between the smallest and the largest weight (Han et al. 2016, sec. 3.2:
linear initialisation beats random and density-based), and C-SGD clusters the filters of a layer (rows of
the flattened weight) with k-means++ seeding and asks for exactly ``k`` non-empty clusters (Ding et al. 2019).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..errors import ConfigError
from ..masks import get_masks, prunable_weights

__all__ = ["kmeans", "Codebook", "share_weights_"]


def _distances(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:  # exact on 1-D values (cdist may take the matrix-product path)
        return (x - c.T).abs()
    return torch.cdist(x, c)


def _kmeanspp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    centers = [x[torch.randint(n, (1,), generator=gen)].squeeze(0)]
    for _ in range(1, k):
        d = _distances(x, torch.stack(centers)).min(dim=1).values ** 2
        if float(d.sum()) <= 0:  # every point sits on a centre already
            centers.append(x[len(centers)])
            continue
        centers.append(x[torch.multinomial(d / d.sum(), 1, generator=gen)].squeeze(0))
    return torch.stack(centers)


def kmeans(x: torch.Tensor, k: int, *, init: Literal["linear", "kmeans++"] = "kmeans++", iters: int = 30,
           seed: int = 0, nonempty: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the rows of ``x`` (``[n]`` or ``[n, d]``) into ``k`` clusters; returns ``(centroids [k, d] (or
    [k] for 1-D input), assignment [n])``.

    ``init="linear"``: centroids evenly spaced between min and max (1-D only; Deep Compression);
    ``"kmeans++"``: seeded k-means++ (``seed``). Lloyd iterations stop at ``iters`` or when the centroids no
    longer move; an empty cluster keeps its centroid, or with ``nonempty=True`` (needs ``k <= n``) takes the
    farthest member of the largest cluster, so every cluster has a member (C-SGD).

    Example:
        >>> c, a = kmeans(torch.tensor([0.0, 0.1, 0.9, 1.0]), 2, init="linear")
        >>> [round(v, 2) for v in c.tolist()], a.tolist()
        ([0.05, 0.95], [0, 0, 1, 1])
    """
    flat = x.dim() == 1
    v = x.detach().float().cpu().reshape(x.shape[0], -1)
    n = v.shape[0]
    if not isinstance(k, int) or k < 1 or (nonempty and k > n):
        raise ConfigError(f"k={k!r} clusters for {n} points; choose 1 <= k <= {n}" if nonempty else
                          f"k={k!r} must be an int >= 1 (number of clusters)")
    if init not in ("linear", "kmeans++"):
        raise ConfigError(f"init={init!r}: choose 'linear' (1-D, Deep Compression) or 'kmeans++'")
    if n == 0:
        return (torch.zeros(k) if flat else torch.zeros(k, v.shape[1])), torch.zeros(0, dtype=torch.long)
    if init == "linear":
        if v.shape[1] != 1:
            raise ConfigError(f"init='linear' spaces centroids between min and max of 1-D values; x has {v.shape[1]} "
                              f"columns: use init='kmeans++'")
        c = torch.linspace(float(v.min()), float(v.max()), k)[:, None]
    else:
        c = _kmeanspp(v, k, torch.Generator().manual_seed(seed))
    assign = _distances(v, c).argmin(1)
    for _ in range(iters):
        sums = torch.zeros_like(c).index_add_(0, assign, v)
        counts = torch.zeros(k).index_add_(0, assign, torch.ones(n))
        new = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c)
        if torch.allclose(new, c):  # converged: keep the centroids the assignment came from
            break
        c = new
        assign = _distances(v, c).argmin(1)
    if nonempty:
        for j in range(k):
            if not (assign == j).any():
                big = int(torch.bincount(assign, minlength=k).argmax())
                members = (assign == big).nonzero().flatten()
                assign[members[_distances(v[members], c[big:big + 1]).flatten().argmax()]] = j
    return (c.flatten() if flat else c), assign


@dataclass
class Codebook:
    """A layer quantised by weight sharing: ``centroids[index]`` where ``index >= 0``, zero where it is -1."""

    centroids: torch.Tensor  # [k] shared values
    index: torch.Tensor  # weight-shaped long tensor: cluster of each weight, -1 where pruned
    bits: int


def share_weights_(model: nn.Module, *, bits_conv: int = 8, bits_fc: int = 5, fqns=None) -> dict[str, Codebook]:
    """Replace each masked layer's surviving weights by their k-means centroid (k = 2^bits, linear init: Deep
    Compression sec. 3.2); a layer without a mask keeps its non-zero weights. Returns ``{fqn: Codebook}``."""
    masks = get_masks(model)
    books = {}
    with torch.no_grad():
        for fqn in (fqns or list(prunable_weights(model))):
            p = model.get_parameter(fqn)
            mask = masks.get(fqn, p != 0)
            bits = bits_fc if p.dim() == 2 else bits_conv
            centroids, assign = kmeans(p[mask], 2 ** bits, init="linear")
            index = torch.full(p.shape, -1, dtype=torch.long)
            index[mask] = assign
            p.copy_(torch.where(mask, centroids[index.clamp_min(0)], torch.zeros_like(p)))
            books[fqn] = Codebook(centroids, index, bits)
    return books
