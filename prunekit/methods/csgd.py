"""C-SGD: centripetal SGD pulls clustered filters together, then each cluster is merged into one filter.

Paper: Xiaohan Ding, Guiguang Ding, Yuchen Guo, Jungong Han, "Centripetal SGD for Pruning Very Deep
Convolutional Networks with Complicated Structure", CVPR 2019. https://arxiv.org/abs/1904.03837

Instead of choosing which filters to throw away, C-SGD decides how many to keep per layer and makes the rest
redundant. The filters of a layer are clustered (k-means on their weights, one cluster per filter to keep);
during training every filter of a cluster receives the cluster's average loss gradient plus a centripetal
term ``eps * (W_i - cluster mean)``, so the filters of a cluster become identical while the network keeps
learning. Identical filters produce identical channels, so after training each cluster can be collapsed into
one filter if the layer that reads them adds their input slices together: the slimmer network computes the
same function and needs no fine-tuning to recover from the cut. Here the update is the
:class:`~prunekit.methods._regularizers.Centripetal` callback (conv weights and bias with ``eps``, the
BatchNorm affine with ``bn_eps_factor * eps``), the per-layer widths come from the engine's uniform allocation
at the MAC/parameter target, filters tied by residual adds are clustered together, and the merge (cluster
mean into the kept filter, consumer slices summed) is followed by the engine's cut of the other members.

The pull acts through the optimizer: with SGD momentum ``m`` the distance inside a cluster shrinks at best by
``sqrt(m)`` per step whatever ``eps`` is (heavy-ball rate on the quadratic ``eps/2 |W_i - mean|^2``), so at
momentum 0.9 a cluster needs about 100 steps to shrink a hundredfold; the paper's ``eps = 3e-3`` is meant for
its 600-epoch stages. The run reports the spread of the clusters before the merge and warns when they did not
converge (the merge is then lossy).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ._config import MethodConfig, option
from ._filter_common import (
    cluster_average_matrix, cut_to_target, filter_groups, kmeans_clusters, merge_clusters_, removal_counts,
    require_prune_epochs, weight_scores,
)
from ..train.config import method_train_config
from ._regularizers import Centripetal
from ._registry import MethodResult, RunContext, Telemetry, register_method
from ..train import fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CSGDConfig(MethodConfig):
    eps: float = option(3e-3, gt=0)  # centripetal strength (authors' code csgd_rc56.py, ResNet-56)
    bn_eps_factor: float = option(0.1, ge=0)  # BN gamma/beta and biases use this fraction of eps (authors' code)
    kmeans_iters: int = option(30, ge=1)  # Lloyd iterations of the filter clustering (ours; authors: scikit-learn)
    tolerance: float = option(1e-2, gt=0)  # converged: spread < this (the entry's check (a); ours as a gate)


def cluster_groups(model, ctx: RunContext, kmeans_iters: int = 30):
    """``{group key: clusters}`` with as many clusters per channel group as the engine keeps at the target."""
    mods = dict(model.named_modules())
    groups = [g for g in filter_groups(model, ctx) if g.convs]
    counts = removal_counts(model, ctx, {f: weight_scores(mods[f].weight, "l2") for g in groups for f in g.convs},
                            "uniform")
    out = {}
    for g in groups:
        n = counts.get(g.key, 0)
        if n <= 0:
            continue
        w = torch.cat([mods[f].weight.detach().reshape(g.width, -1) for f in g.convs], dim=1)
        out[g.key] = kmeans_clusters(w, g.width - n, iters=kmeans_iters, seed=ctx.seed)
    return groups, out


def centripetal_callback(model, groups, clusters: dict, eps: float, bn_eps_factor: float = 0.1) -> Centripetal:
    """The C-SGD gradient rule for every clustered group's producers (conv/linear weight, bias, BN affine)."""
    mods = dict(model.named_modules())
    entries = []
    for g in groups:
        if g.key not in clusters:
            continue
        avg = cluster_average_matrix(clusters[g.key], g.width)
        for f in g.convs:
            entries.append((mods[f].weight, avg, eps))
            if getattr(mods[f], "bias", None) is not None:
                entries.append((mods[f].bias, avg, eps * bn_eps_factor))
        for b in g.bns:
            entries += [(mods[b].weight, avg, eps * bn_eps_factor), (mods[b].bias, avg, eps * bn_eps_factor)]
    return Centripetal(entries)


def cluster_distances(model, groups, clusters: dict) -> list[torch.Tensor]:
    """One tensor per multi-filter cluster: each member's distance to the cluster mean over its layer's mean
    filter norm (0 = the cluster's filters are identical)."""
    mods = dict(model.named_modules())
    out = []
    for g in groups:
        if g.key not in clusters:
            continue
        w = torch.cat([mods[f].weight.detach().reshape(g.width, -1) for f in g.convs], dim=1).float()
        norm = max(float(w.norm(dim=1).mean()), 1e-12)
        out += [((w[c] - w[c].mean(0)).norm(dim=1) / norm).cpu() for c in clusters[g.key] if len(c) > 1]
    return out


def cluster_spread(model, groups, clusters: dict) -> float:
    """Largest distance of a filter to its cluster mean, relative to its layer's mean filter norm (0 = merged)."""
    return max((float(d.max()) for d in cluster_distances(model, groups, clusters)), default=0.0)


def _spread_telemetry(model, groups, clusters, tolerance: float) -> dict:
    d = cluster_distances(model, groups, clusters)
    allv = torch.cat(d) if d else torch.zeros(1)
    return {"spread_max": float(allv.max()), "spread_mean": float(allv.mean()), "clusters": len(d),
            "clusters_converged": sum(1 for x in d if float(x.max()) < tolerance), "tolerance": tolerance}


@register_method("csgd", config=CSGDConfig, kind="structured", needs=("train",),
                 telemetry=Telemetry(keys=("spread_start", "spread_max", "spread_mean", "clusters",
                                           "clusters_converged", "tolerance"),
                                     engaged=lambda t: t["clusters"] > 0 and t["clusters_converged"] == t["clusters"],
                                     what="centripetal convergence of every filter cluster before the merge",
                                     knob="raise options.eps (centripetal strength) or prune_epochs: with SGD "
                                          "momentum m a cluster shrinks at best by sqrt(m) per step"))
def run(ctx: RunContext, cfg: CSGDConfig) -> MethodResult:
    require_prune_epochs(ctx, "csgd")
    model = ctx.model
    groups, clusters = cluster_groups(model, ctx, cfg.kmeans_iters)
    spread_start = cluster_spread(model, groups, clusters)
    cb = centripetal_callback(model, groups, clusters, cfg.eps, cfg.bn_eps_factor)
    fit(model, ctx.train_data, method_train_config(ctx), callbacks=[cb])
    telemetry = {"spread_start": spread_start, **_spread_telemetry(model, groups, clusters, cfg.tolerance)}
    scores = merge_clusters_(model, ctx, groups, clusters)  # kept filter of each cluster scores 1, the rest 0
    report = cut_to_target(model, ctx, scores, allocation="uniform")
    return MethodResult(model=model, info={"cluster_spread": telemetry["spread_max"], **telemetry, **report},
                        telemetry=telemetry)
