"""rnn-jacobian against magnitude, random and SNIP on the LSTM over Fashion-MNIST rows (issue 21).

Protocol (the entry's small-scale check, scaled to the shared machine): ``lstm`` (one layer, 128 units, the
28 rows of an image as 28 steps), pruned once at initialisation to the target sparsity over the recurrent
weights (weight_ih, weight_hh; the classifier stays dense in every row), then trained ``--epochs`` epochs with
Adam (lr 1e-3, batch 64: the paper's setting) on a fixed ``--train`` image subset; test accuracy on
``--test`` images. Scores: rnn-jacobian (its defaults, one batch of 64 training sequences), global magnitude,
random, SNIP (|w dL/dw| on the same batch), each one global ranking over the recurrent weights. One thread;
each finished cell is appended to ``--out`` (JSON lines) and skipped when the script is run again (resumable).

Usage: nice python benchmarks/rnn_jacobian_check.py [--targets 0 0.8 0.9] [--seeds 0 1 2] [--epochs 2] [--train 10000]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F

import prunekit as pk
from prunekit.criteria.recurrent import recurrent_modules
from prunekit.masks import connection_sensitivity, get_masks, install_masks_, select_masks
from prunekit.masks.patterns import get_pattern
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.rnn_jacobian import dead_units

load_all()
SCORES = ("rnn-jacobian", "magnitude", "random", "snip")  # also rnn-jacobian-tensor / rnn-jacobian-none: normalize=


def _prune(model, score, sparsity, calib, seed):
    if score.startswith("rnn-jacobian"):
        opts = {"normalize": score.rpartition("-")[2]} if score != "rnn-jacobian" else {}
        res = get_method("rnn-jacobian").run(RunContext(model=model, example_inputs=calib[0][0][:1], options=opts,
                                                        target=f"sparsity={sparsity}", calib=calib, seed=seed))
        return {k: res.telemetry[k] for k in ("chi_dense", "chi_pruned", "chi_magnitude", "kept_not_by_magnitude")}
    params = {f"lstm.{n}": p for n, p in model.lstm.named_parameters() if n.startswith("weight")}
    if score == "magnitude":
        s = {f: p.detach().abs() for f, p in params.items()}
    elif score == "random":
        g = torch.Generator().manual_seed(seed)
        s = {f: torch.rand(p.shape, generator=g) for f, p in params.items()}
    else:
        s = connection_sensitivity(model, params, calib)
    install_masks_(model, select_masks(s, get_pattern("element"), global_sparsity=sparsity))
    return {}


def cell(score, sparsity, seed, bundle, epochs):
    torch.manual_seed(seed)
    model = pk.models.create("lstm", num_classes=10, in_channels=1, input_size=28)
    g = torch.Generator().manual_seed(seed)
    x, y = next(iter(bundle.train))
    idx = torch.randperm(len(y), generator=g)[:64]
    calib = [(x[idx], y[idx])]
    tel = _prune(model, score, sparsity, calib, seed) if sparsity > 0 else {}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.time()
    for _ in range(epochs):
        model.train()
        for xb, yb in bundle.train:
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    acc = pk.evaluate(model, bundle.test)["accuracy"]
    masks = get_masks(model)
    kept = sum(int(m.sum()) for m in masks.values()) / max(1, sum(m.numel() for m in masks.values()))
    return {"score": score, "sparsity": sparsity, "seed": seed, "accuracy": acc, "kept": kept,
            "dead_units": dead_units(model.lstm), "train_s": round(time.time() - start, 1), **tel}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", type=float, nargs="+", default=[0.0, 0.8, 0.9])  # 0: the dense row
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--scores", nargs="+", default=list(SCORES))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train", type=int, default=10000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--out", default="benchmarks/results/rnn_jacobian_check.jsonl")
    a = ap.parse_args()
    torch.set_num_threads(1)
    bundle = pk.data.load("fashion-mnist", subset=(a.train, a.test), batch_size=64, val_fraction=0.0, augment=False)
    done = set()
    if os.path.exists(a.out):
        with open(a.out) as f:
            done = {(r["score"], r["sparsity"], r["seed"]) for r in map(json.loads, f)}
    for seed in a.seeds:
        for sparsity in a.targets:
            for score in (["dense"] if sparsity == 0 else a.scores):
                if (score, sparsity, seed) in done:
                    continue
                row = {**cell(score, sparsity, seed, bundle, a.epochs), "epochs": a.epochs, "train": a.train}
                with open(a.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
