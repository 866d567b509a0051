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
"""
from __future__ import annotations

import logging

import torch

from ._filter_common import (
    check_target_reachable,
    check_positive, check_training_context, cluster_average_matrix, filter_norms, kmeans_clusters, method_options,
    restore_on_error, train_config,
)
from ._regularizers import Centripetal
from ._registry import MethodResult, RunContext, register_method

log = logging.getLogger(__name__)

DEFAULTS = {
    "eps": 3e-3,  # centripetal strength (ResNet-56 script)
    "bn_eps_factor": 0.1,  # BatchNorm gamma/beta and biases use this fraction of eps (authors' code)
    "kmeans_iters": 30,  # Lloyd iterations of the filter clustering
}


def cluster_groups(model, ctx: RunContext, kmeans_iters: int = 30):
    """``{group key: clusters}`` with as many clusters per channel group as the engine keeps at the target."""
    from ._filter_common import filter_groups, removal_counts

    mods = dict(model.named_modules())
    groups = [g for g in filter_groups(model, ctx) if g.convs]
    counts = removal_counts(model, ctx, {f: filter_norms(mods[f].weight) for g in groups for f in g.convs},
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


def cluster_spread(model, groups, clusters: dict) -> float:
    """Largest distance of a filter to its cluster mean, divided by the mean filter norm (0 = fully merged)."""
    mods = dict(model.named_modules())
    worst, norms = 0.0, []
    for g in groups:
        if g.key not in clusters:
            continue
        w = torch.cat([mods[f].weight.detach().reshape(g.width, -1) for f in g.convs], dim=1)
        norms.append(float(w.norm(dim=1).mean()))
        for c in clusters[g.key]:
            if len(c) > 1:
                worst = max(worst, float((w[c] - w[c].mean(0)).norm(dim=1).max()))
    return worst / max(sum(norms) / max(len(norms), 1), 1e-12)


@register_method("csgd", kind="structured", defaults=DEFAULTS, needs_data=True)
def run(ctx: RunContext) -> MethodResult:
    from ._filter_common import cut_to_target, merge_clusters_
    from ..train import fit

    opts = method_options("csgd", ctx)
    check_positive(opts, "eps", "kmeans_iters")
    check_positive(opts, "bn_eps_factor", allow_zero=True)
    check_training_context(ctx, "csgd")
    check_target_reachable(ctx.model, ctx)
    ctx.model.to(ctx.device)  # gates, masks and statistics are created on the training device
    model = ctx.model
    groups, clusters = cluster_groups(model, ctx, int(opts["kmeans_iters"]))
    cb = centripetal_callback(model, groups, clusters, float(opts["eps"]), float(opts["bn_eps_factor"]))
    with restore_on_error(model):
        fit(model, ctx.train_data, train_config(ctx), callbacks=[cb])
    spread = cluster_spread(model, groups, clusters)
    scores = merge_clusters_(model, ctx, groups, clusters)  # kept filter of each cluster scores 1, the rest 0
    report = cut_to_target(model, ctx, scores, allocation="uniform")
    return MethodResult(model=model, info={"cluster_spread": spread, "eps": opts["eps"], **report})
