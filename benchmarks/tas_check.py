"""The tas entry check on the shipped ResNet-20 / Fashion-MNIST baseline (issue 18), one JSON line per row.

Protocol (the entry's small-scale check, scaled to one shared CPU core): per seed, TAS searches the widths of
the baseline for ``--search-epochs`` epochs on ``--train`` training images at ``--target`` (weights on even
batches, width distributions on odd ones), its argmax shape is cut, re-initialised and trained ``--kd-epochs``
epochs with distillation from the baseline (KD alpha 0.9, T 4). The control is the uniform-width net of the
same MACs (``pk.prune_`` with uniform allocation at the searched net's MACs, about 0.7x the width at
macs=0.5), re-initialised under the same seed and trained identically. Rows: (b) the argmax MACs fraction
against the window [target - 0.05, target]; (c) test accuracy on ``--test`` images, searched vs uniform.
Finished rows in ``--out`` are not run again.

Usage: nice python benchmarks/tas_check.py [--seeds 0]
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
from prunekit.methods._filter_common import reinitialise_
from prunekit.train import evaluate, fit
from prunekit.train.baseline import load_baseline

load_all()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--target", default="macs=0.5")
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--search-epochs", type=int, default=3)
    ap.add_argument("--kd-epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--arch-lr", type=float, default=0.05)  # scaled: the paper's 1e-3 over ~60k arch steps
    ap.add_argument("--out", default="benchmarks/results/tas_check.jsonl")
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
        tcfg = pk.TrainConfig(lr=a.lr, weight_decay=5e-4, scheduler="cosine", progress=False)
        if (seed, "tas") not in done:
            t0 = time.time()
            m = copy.deepcopy(base)
            ctx = RunContext(model=m, example_inputs=x, target=a.target, train_data=train, prune_epochs=a.search_epochs,
                             train_config=tcfg, seed=seed,
                             options={"kd_epochs": a.kd_epochs, "arch_lr": a.arch_lr})
            torch.manual_seed(seed)
            res = get_method("tas").run(ctx)
            row = {"seed": seed, "row": "tas", "target": a.target, "macs": build_graph(m, x).macs() / dense,
                   "accuracy": evaluate(m, test)["accuracy"], "telemetry": res.telemetry, "engaged": res.engaged,
                   "widths": res.info["widths"], "topped_up_steps": res.info["topped_up_steps"],
                   "search_epochs": a.search_epochs, "kd_epochs": a.kd_epochs, "arch_lr": a.arch_lr,
                   "train": a.train, "test": a.test, "seconds": time.time() - t0}
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done.add((seed, "tas"))
        rows = [json.loads(r) for r in out.read_text().splitlines()]
        searched = next(r for r in rows if r["seed"] == seed and r["row"] == "tas")
        if (seed, "uniform") not in done:
            t0 = time.time()
            m = copy.deepcopy(base)
            pk.prune_(m, example_inputs=x, criterion="l1", target=f"macs={searched['macs']:.4f}", allocation="uniform")
            torch.manual_seed(seed)
            reinitialise_(m)
            teacher = copy.deepcopy(base).eval()
            kd = tcfg.replace(epochs=a.kd_epochs, seed=seed, kd_alpha=0.9, kd_temperature=4.0)
            fit(m, train, kd, teacher=teacher)
            row = {"seed": seed, "row": "uniform", "target": f"macs={searched['macs']:.4f}",
                   "macs": build_graph(m, x).macs() / dense, "accuracy": evaluate(m, test)["accuracy"],
                   "kd_epochs": a.kd_epochs, "train": a.train, "test": a.test, "seconds": time.time() - t0}
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done.add((seed, "uniform"))
    print(out.read_text())


if __name__ == "__main__":
    main()
