"""The VCP and RBP entry checks, scaled to one core (issue 20).

VCP (small VGG with BN, shipped Fashion-MNIST baseline): ``--vcp-epochs`` epochs of ELBO training with the
variational saliency on ``--subset`` training images (SGD lr 0.01), the posterior rule's cut, no fine-tune.
Compared with network-slimming-style |gamma| selection on the *same* trained network at the *same* per-layer
widths (the cut of the method is intercepted to keep the pre-cut network), so only the selection rule differs.

RBP (LeNet-5, shipped baseline): ``--rbp-epochs`` epochs of noise learning per layer, the log-alpha rule layer by
layer, then ``--finetune`` epochs of fine-tuning (lr 0.01). Compared with L1-filter selection at the same
per-layer widths from the baseline plus the same fine-tune.

Both at the ELBO weight (``kl_scale=1``, the paper's objective) and at the stronger ``--kl-scale`` given.
Test accuracy on 2,000 test images. Results go to ``benchmarks/results/bayes_channel_checks.json`` / ``.md``.

Usage: nice python benchmarks/bayes_channel_checks.py [--seed 0] [--kl-scale 100] [--subset 5000]
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

import prunekit as pk
from prunekit.graph import build_graph
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods import vcp as vcp_module
from prunekit.methods._filter_common import bn_criterion_scores, filter_groups, _graph
from prunekit.train import TrainConfig, evaluate, fit
from prunekit.train.baseline import load_baseline

OUT = Path(__file__).resolve().parent / "results"


def acc(model, data):
    return evaluate(model, data)["accuracy"]


def channels(model, ctx):
    return sum(g.width for g in filter_groups(model, ctx, _graph(model, ctx)))


def same_widths_cut(model, ctx, scores, widths):
    """Remove the lowest ``scores`` in every group down to ``widths`` (the method's per-layer result)."""
    groups = filter_groups(model, ctx, _graph(model, ctx))
    chosen = {}
    for g in groups:
        s = sum(torch.as_tensor(scores[f]).double() for f in (*g.convs, *g.bns) if f in scores)
        k = g.width - widths.get(g.key, g.width)
        if k > 0:
            chosen[g.key] = torch.sort(s, stable=True).indices[:k].sort().values.tolist()
    if chosen:
        pk.prune_(model, pk.plan_channels(model, ctx.example_inputs, chosen, ignore=list(ctx.ignore)))


def vcp_row(b, seed, kl_scale, epochs):
    model = load_baseline("vgg-small-fashion-mnist")
    test = list(b.test)
    base = acc(model, test)
    kept = {}
    real_cut = vcp_module.cut_to_target

    def intercept(m, ctx, scores, allocation="global"):
        kept["model"] = copy.deepcopy(m)
        return real_cut(m, ctx, scores, allocation)

    vcp_module.cut_to_target = intercept
    try:
        ctx = RunContext(model=model, example_inputs=b.example_inputs(2), target="macs=0.99", train_data=b.train,
                         prune_epochs=epochs, seed=seed, options={"kl_scale": kl_scale},
                         train_config=TrainConfig(lr=0.01, progress=False))
        res = get_method("vcp").run(ctx)
    finally:
        vcp_module.cut_to_target = real_cut
    trained = kept["model"]
    n0 = channels(trained, ctx)
    before_cut = acc(trained, test)
    slim = copy.deepcopy(trained)
    same_widths_cut(slim, ctx, bn_criterion_scores(slim), res.info["widths"])
    x = b.example_inputs(2)
    return {"baseline": base, "trained_before_cut": before_cut, "vcp": acc(model, test), "slimming_same_widths":
            acc(slim, test), "channels_removed_fraction": 1 - channels(model, ctx) / n0,
            "macs_kept": build_graph(model, x).macs() / build_graph(trained, x).macs(),
            "telemetry": res.telemetry, "engaged": res.engaged}


def rbp_row(b, seed, kl_scale, epochs, finetune):
    model = load_baseline("lenet5-fashion-mnist")
    dense = copy.deepcopy(model)
    test = list(b.test)
    base = acc(model, test)
    ctx = RunContext(model=model, example_inputs=b.example_inputs(2), target="macs=0.99", train_data=b.train,
                     prune_epochs=epochs, seed=seed, options={"kl_scale": kl_scale}, ignore=("fc2",),
                     train_config=TrainConfig(lr=0.01, progress=False))
    res = get_method("rbp").run(ctx)
    after_cut = acc(model, test)
    ft = TrainConfig(lr=0.01, epochs=finetune, progress=False, seed=seed)
    fit(model, b.train, ft)
    widths = {g.key: g.width for g in filter_groups(model, ctx, _graph(model, ctx))}
    l1 = copy.deepcopy(dense)
    scores = {g.key: l1.get_submodule(g.key).weight.detach().abs().flatten(1).sum(1)
              for g in filter_groups(l1, ctx, _graph(l1, ctx))}
    same_widths_cut(l1, ctx, scores, widths)
    l1_cut = acc(l1, test)
    fit(l1, b.train, ft)
    n0 = channels(dense, ctx)
    return {"baseline": base, "rbp_after_cut": after_cut, "rbp": acc(model, test), "l1_same_widths_after_cut": l1_cut,
            "l1_same_widths": acc(l1, test), "channels_removed_fraction": 1 - channels(model, ctx) / n0,
            "widths": widths, "telemetry": res.telemetry, "engaged": res.engaged}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kl-scale", type=float, nargs="+", default=[1.0, 100.0])
    ap.add_argument("--subset", type=int, default=5000)
    ap.add_argument("--vcp-epochs", type=int, default=4)
    ap.add_argument("--rbp-epochs", type=int, default=2)
    ap.add_argument("--finetune", type=int, default=2)
    ap.add_argument("--only", choices=["vcp", "rbp"], default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    load_all()
    b = pk.data.load("fashion-mnist", subset=(a.subset, 2000), batch_size=128, val_fraction=0.0, seed=a.seed)
    path = OUT / "bayes_channel_checks.json"
    done = json.loads(path.read_text()) if path.exists() else {}
    for kl in a.kl_scale:
        for mid in ("vcp", "rbp"):
            if a.only and mid != a.only:
                continue
            key = f"{mid}_kl{kl:g}_s{a.seed}_n{a.subset}"
            if key in done:
                continue
            t0 = time.time()
            row = (vcp_row(b, a.seed, kl, a.vcp_epochs) if mid == "vcp"
                   else rbp_row(b, a.seed, kl, a.rbp_epochs, a.finetune))
            done[key] = {**row, "seconds": time.time() - t0}
            path.write_text(json.dumps(done, indent=1))
            print(key, json.dumps(done[key]))


if __name__ == "__main__":
    main()
