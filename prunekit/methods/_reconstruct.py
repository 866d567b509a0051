"""Layer-output reconstruction shared by ThiNet and cp-lasso: cut with a reconstruction criterion, measure
how much of each reading layer's output the removed channels carried, re-fit the readers by least squares."""
from __future__ import annotations

import torch

from ..api import plan, prune_
from ..criteria.reconstruction import _run, contributions, least_squares_refit_, record_io, refittable
from ._registry import RunContext

RECONSTRUCTION_TELEMETRY = dict(
    keys=("selection_error", "random_error", "refit_layers"), engaged=lambda t: t["refit_layers"] > 0,
    knob="set options refit='full' (or 'scale') so the layers reading the cut channels are re-fitted")


def reconstruction_error(model, calib, p, readers: list, seed: int = 0, n_samples: int = 2000) -> dict:
    """``{reader: error}`` of plan ``p`` before any re-fit: on sampled outputs of each reading layer, the
    mean squared sum of the removed input channels' contributions over the mean squared output (bias left
    out) -- ThiNet's objective, relative."""
    mods = dict(model.named_modules())
    out = {}
    for f in readers:
        x = _run(model, calib, [f], "in").get(f)
        cut = sorted({i for g in p.groups for m in g.members if m["fqn"] == f + ".weight" and m["dim"] == 1
                      for i in m["indices"]})
        if x is None or not cut:
            continue
        mod = mods[f]
        x = x if isinstance(mod, torch.nn.Conv2d) else x.reshape(x.shape[0], -1, 1)
        z = contributions(mod, mod.weight, x, n_samples, torch.Generator().manual_seed(seed))  # [S, C_in]
        out[f] = float(z[:, cut].sum(1).pow(2).mean() / z.sum(1).pow(2).mean().clamp_min(1e-30))
    return out


def prune_and_refit(ctx: RunContext, criterion: str, allocation: str, refit: str) -> tuple[dict, dict]:
    """Record the readers' outputs, cut with ``criterion``, re-fit the readers whose inputs were cut.
    Returns (info, telemetry): the reconstruction error of the selection against a random selection at
    the same target (before the re-fit), and the layers the least-squares re-fit changed."""
    kw = dict(target=ctx.target, ignore=list(ctx.ignore), allocation=allocation, seed=ctx.seed)
    p = plan(ctx.model, ctx.example_inputs, criterion=criterion, calib=ctx.calib, **kw)
    readers = refittable(ctx.model, sorted({m["fqn"].rpartition(".")[0] for g in p.groups if g.channels
                                            for m in g.members if m.get("role") == "consumer"
                                            and m["fqn"].endswith(".weight") and m["dim"] == 1}))
    chosen = reconstruction_error(ctx.model, ctx.calib, p, readers, ctx.seed)
    rnd = reconstruction_error(ctx.model, ctx.calib, plan(ctx.model, ctx.example_inputs, criterion="random", **kw),
                               readers, ctx.seed)
    targets = record_io(ctx.model, ctx.calib, readers) if refit != "none" else {}
    for f in list(targets):  # a reader whose own filters are cut keeps only its surviving outputs
        cut = sorted({i for g in p.groups for m in g.members if m["fqn"] == f + ".weight" and m["dim"] == 0
                      for i in m["indices"]})
        if cut:
            keep = [i for i in range(targets[f].shape[1]) if i not in set(cut)]
            targets[f] = targets[f][:, keep]
    rep = prune_(ctx.model, p)
    errors = least_squares_refit_(ctx.model, ctx.calib, targets, mode=refit, seed=ctx.seed) if targets else {}
    mean = lambda d: sum(d.values()) / len(d) if d else float("nan")  # noqa: E731
    telemetry = {"selection_error": mean(chosen), "random_error": mean(rnd),
                 "refit_layers": sum(e["mse_after"] < e["mse_before"] for e in errors.values())}
    info = {"criterion": criterion, "allocation": allocation, "refit": refit, "engine_report": rep.to_dict(),
            "refit_mse": errors, "selection_error_per_layer": chosen, "random_error_per_layer": rnd}
    return info, telemetry
