"""The fddp entry check on LeNet-5 / Fashion-MNIST (issue 21), every number printed as JSON lines.

Protocol (the entry's small-scale check at the shared machine's budget): LeNet-5 trained ``--dense-epochs``
epochs (SGD lr 0.05, cosine, batch 128) on a fixed ``--train`` image subset, then from that model, each row
trains ``--epochs`` more epochs (same optimizer): ``dense`` (no pruning: the equal-budget reference),
``fddp`` (its defaults: band-adaptive dynamic DCT masks), ``fddp-bands-none`` (one threshold per layer) and
``dns-spatial`` (DNS on the spatial taps with the same schedule: mask revised every step, hysteresis
0.9 / 1.1, no exact top-up), all at ``--sparsity`` of the conv weights (fddp: of the DCT coefficients; the
Linear layers stay dense in every row). Test accuracy on ``--test`` images; seeds as given. Resumable: rows
already in ``--out`` (JSON lines) are skipped.

Usage: nice python benchmarks/fddp_check.py [--seeds 0 1 2] [--sparsity 0.85]
"""
from __future__ import annotations

import argparse
import json
import os

import torch

import prunekit as pk
from prunekit.masks.dct import dct2
from prunekit.methods import RunContext, get_method, load_all

load_all()
ROWS = ("dense", "fddp", "fddp-bands-none", "dns-spatial")


def row(name, dense_state, bundle, sparsity, epochs, seed):
    torch.manual_seed(seed)
    m = pk.models.create("lenet5")
    m.load_state_dict(dense_state)
    cfg = pk.TrainConfig(epochs=epochs, lr=0.05, seed=seed, progress=False)
    out = {"row": name, "seed": seed, "sparsity": sparsity, "epochs": epochs}
    if name == "dense":
        pk.fit(m, bundle.train, cfg)
    else:
        mid, opts = {"fddp": ("fddp", {}), "fddp-bands-none": ("fddp", {"bands": "none"}),
                     "dns-spatial": ("dns", {"gamma": 0.0, "stop_fraction": 1.0, "exact": False})}[name]
        res = get_method(mid).run(RunContext(model=m, example_inputs=None, target=f"sparsity={sparsity}",
                                             train_data=bundle.train, prune_epochs=epochs, train_config=cfg,
                                             ignore=("fc1", "fc2"), seed=seed, options=opts))
        out.update({k: v for k, v in res.telemetry.items()})
        convs = [m.conv1.weight.detach(), m.conv2.weight.detach()]
        out["conv_zero_taps"] = sum(int((w == 0).sum()) for w in convs) / sum(w.numel() for w in convs)
        out["conv_zero_coefs"] = sum(int((dct2(w).abs() < 1e-6).sum()) for w in convs) / sum(w.numel() for w in convs)
    out["accuracy"] = pk.evaluate(m, bundle.test)["accuracy"]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sparsity", type=float, default=0.85)
    ap.add_argument("--dense-epochs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train", type=int, default=10000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--rows", nargs="+", default=list(ROWS))
    ap.add_argument("--out", default="benchmarks/results/fddp_check.jsonl")
    a = ap.parse_args()
    torch.set_num_threads(1)
    bundle = pk.data.load("fashion-mnist", subset=(a.train, a.test), batch_size=128, val_fraction=0.0, augment=False)
    done = set()
    if os.path.exists(a.out):
        with open(a.out) as f:
            done = {(r["row"], r["seed"], r["sparsity"]) for r in map(json.loads, f)}
    for seed in a.seeds:
        todo = [r for r in a.rows if (r, seed, a.sparsity) not in done]
        if not todo:
            continue
        torch.manual_seed(seed)
        dense = pk.models.create("lenet5")
        pk.fit(dense, bundle.train, pk.TrainConfig(epochs=a.dense_epochs, lr=0.05, seed=seed, progress=False))
        base = {"row": "pretrained", "seed": seed, "accuracy": pk.evaluate(dense, bundle.test)["accuracy"]}
        print(json.dumps(base), flush=True)
        for name in todo:
            r = {**row(name, dense.state_dict(), bundle, a.sparsity, a.epochs, seed), "train": a.train,
                 "pretrained_accuracy": base["accuracy"]}
            with open(a.out, "a") as f:
                f.write(json.dumps(r) + "\n")
            print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
