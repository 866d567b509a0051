"""Telemetry shared by several methods: figures that show a criterion or a mechanism acted."""
from __future__ import annotations

import numpy as np
from ..api import score_groups
from ..graph import build_graph

def criterion_separation(model, example_inputs, plan, criterion: str, *, calib=None, reduce: str = "group",
                         seed: int = 0) -> dict:
    """How far ``criterion`` decided ``plan`` (made on ``model``, not yet applied): the one-shot telemetry.

    Scores every group again through the engine (:func:`prunekit.api.score_groups`) and compares, per cut
    group, the removed channels with the lowest-scoring kept one: ``groups_cut``; ``groups_ranked``, the cut
    groups where at least one removed channel scores strictly below every kept one (the criterion, not the
    index order, chose it); ``tied_fraction``, removed channels scoring the same as the lowest kept one (the
    index order chose them); ``removed_over_kept``, the mean over cut groups of (mean removed score / mean
    kept score).
    """
    named = dict(model.named_modules())
    ignore = {id(named[f]): f for f in plan.settings.get("ignore", []) if f in named}
    graph = build_graph(model, example_inputs, ignore_modules=ignore)
    scores = score_groups(model, graph, criterion, calib=calib, reduce=reduce, seed=seed)
    by_name = {g.name: s for g, s in zip(graph.groups, scores)}
    cut = ranked = removed_n = tied = 0
    ratios = []
    for g in plan.groups:
        if not g.removed or g.name not in by_name:
            continue
        s = np.asarray(by_name[g.name], dtype=np.float64)
        gone = np.zeros(len(s), bool)
        gone[g.channels] = True
        low_kept = s[~gone].min()
        same = np.isclose(s[gone], low_kept, rtol=1e-9, atol=1e-12)
        cut += 1
        ranked += bool(((s[gone] < low_kept) & ~same).any())
        removed_n += int(gone.sum())
        tied += int(same.sum())
        kept_mean = s[~gone].mean()
        ratios.append(float(s[gone].mean() / kept_mean) if kept_mean else 1.0)
    return {"groups_cut": cut, "groups_ranked": ranked, "tied_fraction": tied / max(removed_n, 1),
            "removed_over_kept": float(np.mean(ratios)) if ratios else 1.0}


ONE_SHOT_TELEMETRY = dict(
    keys=("groups_cut", "groups_ranked", "tied_fraction", "removed_over_kept"),
    engaged=lambda t: t["groups_ranked"] >= 1,
)




# the round-based methods (taylor-fo, taylor-fm): training between the cuts is their mechanism
ROUNDS_TELEMETRY = dict(
    keys=("rounds", "steps_between", "train_steps"), engaged=lambda t: t["train_steps"] > 0,
    knob="raise steps_between (minibatches trained after each cut), or lower per_round / raise max_rounds so "
         "the target takes several rounds",
)
