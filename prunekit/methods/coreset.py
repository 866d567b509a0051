"""Coreset: prune filters by their responses, then replace each layer's filters by a small basis (Coreset-K).

Paper: Abhimanyu Dubey, Moitreya Chatterjee, Narendra Ahuja, "Coreset-Based Neural Network Compression",
ECCV 2018. https://arxiv.org/abs/1807.09810 (reference code, read to understand: github.com/metro-smiles/
CNN_Compression, ``Gen_Clust_New_AllLayers_Omp.py`` and ``compress_pytorch.py``).

Two steps, no retraining. First, activation-based filter pruning: each layer's responses are recorded over
sample images, every filter is scored by the norm of its responses, and only the top fraction of every layer
is kept; the other filters go, with the input channels that read them downstream. Second, the remaining filters
of a layer are treated as points and summarised by a coreset: a truncated SVD of the flattened filters
(Coreset-K) keeps ``k`` basis filters, and every filter is re-synthesised as a combination of them -- the layer
becomes ``k`` basis filters followed by a 1x1 layer holding the reconstruction coefficients. ``k`` is a fixed
fraction of the layer's filters, or the number of singular values above ``4 / sqrt(3)`` times their median.
By Eckart-Young the re-synthesised filters are the closest rank-``k`` set to the originals, and a filter that is
an exact combination of others costs nothing: a layer whose filters span ``k`` dimensions is reproduced exactly.

Here the responses are read where the network uses them (the input of the layers reading the channel, after
BatchNorm and ReLU) over the calibration batches, and the layer is a real smaller module
(:class:`~prunekit.surgery.factorize.HingeConv`: ``k`` basis filters, then the 1x1 coefficients with the
bias), kept only where it has fewer parameters than the conv. The step-1 fraction is the same for every layer
(the paper sets per-layer thresholds by hand) and is searched so the model meets the ``macs=``/``params=``
target after step 2 (ours); ``keep_fraction`` sets it by hand. ``per_class`` ranks the filters on each class's
images separately and keeps the union of the classes' top filters (the reference code). Left out: Coreset-S
(sparse PCA), the fully connected layers' coresets, and step 3 (quantisation and Huffman coding, see
``deep-compression``). The reference puts the bias into the SVD as one more coordinate; here it
stays exact on the 1x1 layer.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..allocate import kept_width, search_target
from ..api import plan_channels, prune_, score_groups
from ..criteria.activation import score_act_norm
from ..errors import ConfigError
from ..surgery.factorize import HingeConv
from ._config import MethodConfig, option
from ._filter_common import _graph, filter_groups
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["CoresetKConfig", "response_norm", "coreset_rank", "run"]


@dataclass(frozen=True)
class CoresetKConfig(MethodConfig):
    selection: Literal["activation", "random"] = "activation"  # step 1 score (code omp_appx: norm of responses);
    # random: the entry's control
    rank_rule: Literal["fraction", "median"] = "fraction"  # Coreset-K rank: a fixed ratio (compress_l2, fac > 0)
    # or the singular values above 4/sqrt(3) x their median (compress_l2, fac = -1)
    rank_fraction: float = option(0.5, gt=0, le=1)  # k = int(fraction x filters) (compress_l2; entry's check 0.5)
    keep_fraction: float | None = option(None, gt=0, le=1)  # step 1 fraction kept per layer, by hand in the paper
    # (entry's check 0.5); None: searched to meet the target (ours)
    per_class: bool = False  # reference code (omp_appx per class folder): top fraction per class, union kept;
    # False: one ranking over all sample images (the paper's text)


response_norm = score_act_norm  # step 1's filter score: the registered criterion ``act-norm``


def coreset_rank(singular_values: torch.Tensor, n_filters: int, rule: str, fraction: float) -> int:
    """Coreset-K's rank: ``int(fraction * n_filters)`` or, for ``"median"``, the number of singular values at
    least ``4 / sqrt(3)`` times their median (the reference's two rules); at least 1.

    Example:
        >>> s = torch.tensor([10.0, 5.0, 1.0, 0.5])   # median 3.0: threshold 6.93
        >>> coreset_rank(s, 4, "median", 0.5), coreset_rank(s, 4, "fraction", 0.5), coreset_rank(s, 3, "fraction", 0.3)
        (1, 2, 1)
    """
    if rule == "median":
        s = singular_values.double().cpu().numpy()
        k = int((s >= 4.0 / math.sqrt(3.0) * float(np.median(s))).sum())
    else:
        k = int(n_filters * fraction)
    return max(1, min(k, singular_values.numel()))


def _class_batches(calib) -> list:
    """The calibration batches split by label: one list of ``(inputs, targets)`` batches per class present."""
    by_class: dict = {}
    for x, y in calib:
        if not isinstance(y, torch.Tensor) or not isinstance(x, torch.Tensor):
            raise ConfigError("options['per_class']=True ranks filters per class and needs calibration batches of "
                              "(input tensor, label tensor); pass labelled calib or set per_class=False")
        for c in torch.unique(y).tolist():
            sel = y == c
            by_class.setdefault(c, []).append((x[sel], y[sel]))
    return [by_class[c] for c in sorted(by_class)]


def _conv_sides(graph, names) -> dict:
    """``{conv fqn: (out (group id, channel of each filter) | None, [in (group id, channel of each input)])}``."""
    out = {n: [None, []] for n in names}
    for g in graph.groups:
        for m in g.members:
            mod, _, pname = m.fqn.rpartition(".")
            if mod in out and pname == "weight":
                ch = np.asarray(m.channel)
                if m.dim == 0 and m.role == "producer":
                    out[mod][0] = (g.id, ch)
                elif m.dim == 1:
                    out[mod][1].append((g.id, ch))
    return out


def _kept(side, removal: dict, width: int) -> np.ndarray:
    """Positions along one side of a weight that survive ``removal`` (``{group id: removed channels}``)."""
    keep = np.ones(width, bool)
    for gid, ch in ([side] if isinstance(side, tuple) else side):
        gone = removal.get(gid)
        if gone is not None and len(gone):
            keep &= ~np.isin(ch, gone)
    return np.nonzero(keep)[0]


@register_method(
    "coreset", config=CoresetKConfig, kind="structured", needs=("calib",), status="partial", left_out=(
        "Coreset-S (sparse PCA), coresets of the fully connected layers, and step 3 (quantisation + Huffman "
        "coding: method deep-compression); the bias stays exact on the 1x1 layer instead of joining the SVD"),
    telemetry=Telemetry(
        keys=("filters_removed", "layers_decomposed", "rank_kept", "recon_error", "removal_error"),
        engaged=lambda t: t["layers_decomposed"] >= 1,
        what="filters re-synthesised from a rank-k basis (Coreset-K) followed by a 1x1 layer",
        knob="lower options.rank_fraction (or use rank_rule='median'): a layer is re-synthesised only when k basis "
             "filters and the 1x1 coefficients are smaller than the conv"))
def run(ctx: RunContext, cfg: CoresetKConfig) -> MethodResult:
    """Step 1: keep the filters with the strongest responses; step 2: Coreset-K on every conv's filters."""
    model = ctx.model
    graph = _graph(model, ctx)
    groups = filter_groups(model, ctx, graph)
    mods = dict(model.named_modules())
    names = [n for n, m in model.named_modules() if n and isinstance(m, nn.Conv2d) and m.groups == 1
             and not any(n == i or n.startswith(i + ".") for i in ctx.ignore)]
    if not names:
        raise ConfigError(f"model={type(model).__name__}: method 'coreset' found no nn.Conv2d (groups=1) outside "
                          f"ignore=[...]; it compresses conv filters")
    index = {id(g): i for i, g in enumerate(graph.groups)}

    def response_scores(batches) -> dict:  # the registered act-norm criterion through the engine
        per_group = score_groups(model, graph, "act-norm", calib=batches, reduce="producer")
        return {fg.key: np.asarray(per_group[index[id(fg.group)]], dtype=np.float64) for fg in groups}

    if cfg.selection == "random":
        gen = torch.Generator().manual_seed(ctx.seed)
        scores = {fg.key: torch.rand(fg.width, generator=gen, dtype=torch.float64).numpy()[None] for fg in groups}
    elif cfg.per_class:  # [classes, width]: one ranking per class, the union of their top filters kept
        per = [response_scores(b) for b in _class_batches(ctx.calib)]
        scores = {fg.key: np.stack([p[fg.key] for p in per]) for fg in groups}
    else:
        scores = {k: v[None] for k, v in response_scores(ctx.calib).items()}
    sides = _conv_sides(graph, names)
    per_module = graph.macs_per_module()
    positions = {n: per_module.get(n, 0) // mods[n].weight.numel() for n in names}
    cost = graph.macs if ctx.target_kind == "macs" else graph.params
    dense = cost()
    svd_cache: dict = {}

    def removal_at(sparsity: float) -> dict:
        out = {}
        for fg in groups:
            k = kept_width(fg.width, sparsity)
            if k < fg.width:
                kept = np.unique(np.argsort(-scores[fg.key], axis=1, kind="stable")[:, :k])
                if len(kept) < fg.width:
                    out[fg.group.id] = np.setdiff1d(np.arange(fg.width), kept)
        return out

    def ranks_at(removal: dict) -> dict:
        """``{conv: (rank, kept filters, kept inputs)}`` of the convs whose basis form is smaller."""
        out = {}
        for n in names:
            w = mods[n].weight
            ko = _kept(sides[n][0], removal, w.shape[0]) if sides[n][0] else np.arange(w.shape[0])
            ki = _kept(sides[n][1], removal, w.shape[1])
            k2 = w[0, 0].numel()
            if cfg.rank_rule == "median":
                key = (n, ko.tobytes(), ki.tobytes())
                if key not in svd_cache:
                    sub = w.detach().double().cpu()[torch.as_tensor(ko)][:, torch.as_tensor(ki)]
                    svd_cache[key] = torch.linalg.svdvals(sub.reshape(len(ko), -1))
                s = svd_cache[key]
            else:
                s = torch.ones(min(len(ko), len(ki) * k2))
            r = coreset_rank(s, len(ko), cfg.rank_rule, cfg.rank_fraction)
            if r * (len(ki) * k2 + len(ko)) < len(ko) * len(ki) * k2:
                out[n] = (r, len(ko), len(ki))
        return out

    def cost_at(sparsity: float) -> int:
        removal = removal_at(sparsity)
        c = cost(graph.removed_flat(removal))
        for n, (r, co, ci) in ranks_at(removal).items():
            k2 = mods[n].weight[0, 0].numel()
            per = positions[n] if ctx.target_kind == "macs" else 1
            c -= (co * ci * k2 - r * (ci * k2 + co)) * per
        return int(c)

    budget = int(ctx.target_value * dense)
    if cfg.keep_fraction is not None:
        sparsity = 1.0 - cfg.keep_fraction
        if cost_at(sparsity) > budget:
            raise ConfigError(f"method 'coreset': options['keep_fraction']={cfg.keep_fraction} keeps "
                              f"{cost_at(sparsity) / dense:.3f} of the {ctx.target_kind} after Coreset-K, more than "
                              f"target={ctx.target!r}; lower keep_fraction or rank_fraction, or leave keep_fraction "
                              f"unset to search it")
    else:
        try:
            sparsity = search_target(cost_at, budget, hi=0.999, steps=20)
        except ConfigError as e:
            raise ConfigError(f"method 'coreset': target={ctx.target!r}: {e}") from None
    removal = removal_at(sparsity)
    plan, predicted = ranks_at(removal), cost_at(sparsity)  # on the unpruned shapes
    by_gid = {fg.group.id: fg.key for fg in groups}
    chosen = {by_gid[g]: [int(i) for i in v] for g, v in removal.items()}
    report = None
    if chosen:
        report = prune_(model, plan_channels(model, ctx.example_inputs, chosen, ignore=list(ctx.ignore)))
    err2, rem2, norm2, kept_rank, kept_all = 0.0, 0.0, 0.0, 0, 0
    for n, (r, co, _) in plan.items():
        conv = model.get_submodule(n)
        w = conv.weight.detach().double().reshape(co, -1).cpu()
        s2 = torch.linalg.svdvals(w).pow(2)
        norm2, err2 = norm2 + float(s2.sum()), err2 + float(s2[r:].sum())
        rem2 += float(w.norm(dim=1).pow(2).sort().values[: co - r].sum())  # plain removal: keep the r largest filters
        kept_rank, kept_all = kept_rank + r, kept_all + co
        model.set_submodule(n, HingeConv.from_conv(conv, rank=r))
    telemetry = {"filters_removed": int(sum(len(v) for v in chosen.values())), "layers_decomposed": len(plan),
                 "rank_kept": kept_rank / kept_all if kept_all else 1.0,
                 "recon_error": math.sqrt(err2 / norm2) if norm2 else 0.0,
                 "removal_error": math.sqrt(rem2 / norm2) if norm2 else 0.0}
    log.info("coreset: %d filters removed, %d convs re-synthesised at rank %.3f", telemetry["filters_removed"],
             len(plan), telemetry["rank_kept"])
    info = {"keep_fraction": 1.0 - sparsity, "removed": chosen, "ranks": {n: v[0] for n, v in plan.items()},
            "filters": {n: v[1] for n, v in plan.items()}, "predicted_cost": predicted, "dense_cost": dense,
            "engine_report": report.to_dict() if report else None}
    return MethodResult(model=model, telemetry=telemetry, info=info)
