"""The dsa entry check on the shipped ResNet-20 / Fashion-MNIST baseline (issue 18), one JSON line per row.

Protocol (the entry's small-scale check, scaled to one shared CPU core): per seed, DSA learns the keep ratios of
the baseline for ``--alloc-epochs`` epochs on ``--train`` training images at ``--target`` (weights on even
batches, ratios on odd ones), cuts them, recalibrates BN on 8 training batches and fine-tunes ``--epochs``
epochs. The control is uniform-ratio L1 pruning (``pk.prune_`` with uniform allocation) at the MACs DSA
realised, recalibrated the same way and fine-tuned ``--epochs + --alloc-epochs`` epochs (the same total
training). Rows record (a) the expected MACs of the final ratios against the budget (+-3%) and the realised
MACs (+-5%), (b) the spread of the ratios across groups (std > 0.05), (c) test accuracy on ``--test`` images
right after the cut (BN recalibrated) and after the fine-tune. Finished rows in ``--out`` are not run again.

Usage: nice python benchmarks/dsa_check.py [--seeds 0]
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

import prunekit as pk
from prunekit.data import first_examples
from prunekit.graph import build_graph
from prunekit.methods import RunContext, get_method, load_all
from prunekit.train import evaluate, fit
from prunekit.train.baseline import load_baseline
from prunekit.train.subnet_eval import recalibrate_bn

load_all()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--target", default="macs=0.5")
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--alloc-epochs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--out", default="benchmarks/results/dsa_check.jsonl")
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    done = {(r["seed"], r["row"]) for r in map(json.loads, out.read_text().splitlines())} if out.exists() else set()
    out.parent.mkdir(parents=True, exist_ok=True)
    for seed in a.seeds:
        data = pk.data.load("fashion-mnist", batch_size=128, subset=a.train, seed=seed, val_fraction=0.0)
        train, test = first_examples(data.train, a.train), first_examples(data.test, a.test)
        x = data.example_inputs(2)
        base = load_baseline("resnet20-fashion-mnist")
        dense = build_graph(base, x).macs()
        tcfg = pk.TrainConfig(lr=a.lr, weight_decay=5e-4, scheduler="cosine", progress=False, seed=seed)

        def finish(m, epochs):
            recalibrate_bn(m, train[:8])
            cut = evaluate(m, test)["accuracy"]
            fit(m, train, tcfg.replace(epochs=epochs))
            return cut, evaluate(m, test)["accuracy"]

        if (seed, "dsa") not in done:
            t0 = time.time()
            m = copy.deepcopy(base)
            ctx = RunContext(model=m, example_inputs=x, target=a.target, train_data=train, prune_epochs=a.alloc_epochs,
                             train_config=tcfg, seed=seed)
            res = get_method("dsa").run(ctx)
            macs = build_graph(m, x).macs() / dense
            cut, tuned = finish(m, a.epochs)
            row = {"seed": seed, "row": "dsa", "target": a.target, "macs": macs, "acc_cut": cut, "acc_tuned": tuned,
                   "telemetry": res.telemetry, "engaged": res.engaged, "ratios": res.info["ratios"],
                   "epochs_total": a.alloc_epochs + a.epochs, "train": a.train, "test": a.test,
                   "seconds": time.time() - t0}
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done.add((seed, "dsa"))
        rows = [json.loads(r) for r in out.read_text().splitlines()]
        ref = next(r for r in rows if r["seed"] == seed and r["row"] == "dsa")
        if (seed, "uniform-l1") not in done:
            t0 = time.time()
            m = copy.deepcopy(base)
            pk.prune_(m, example_inputs=x, criterion="l1", target=f"macs={ref['macs']:.4f}", allocation="uniform")
            macs = build_graph(m, x).macs() / dense
            cut, tuned = finish(m, a.epochs + a.alloc_epochs)
            row = {"seed": seed, "row": "uniform-l1", "target": f"macs={ref['macs']:.4f}", "macs": macs,
                   "acc_cut": cut, "acc_tuned": tuned, "epochs_total": a.alloc_epochs + a.epochs, "train": a.train,
                   "test": a.test, "seconds": time.time() - t0}
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done.add((seed, "uniform-l1"))
    print(out.read_text())


if __name__ == "__main__":
    main()
