"""Scaled small-scale checks of energy-aware, dmc and gfs (issue 17) on the shipped LeNet-5 / Fashion-MNIST.

One JSON line per (seed, row) in ``--out``; finished rows are not run again (resumable). Protocol, per seed:
``--train`` training images (batch 128), ``--test`` test images, every row fine-tuned ``--epochs`` epochs (SGD
lr ``--lr``, cosine) after its cut; accuracy right after the cut and after the fine-tune.

- energy-aware at ``--sparsity`` against global magnitude pruning at the same sparsity (no restore): proxy
  energy (prunekit.measure.energy, Eyeriss costs) before/after, masks kept during the fine-tune;
- dmc (gates trained 1 epoch, weights frozen) at ``--target`` against uniform L1 and random channel selection at
  the same target (the gate epoch is extra work the controls do not get: it is reported in ``epochs_before``);
- gfs (defaults: tol 0.02, 50 candidates, 0.1-epoch fine-tune per layer; mini-batches of ``--gfs-batch``
  images for the greedy additions) against the same controls.

Usage: nice python benchmarks/search_c_checks.py [--seeds 0] [--rows energy-aware magnitude dmc gfs l1 random]
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
from prunekit.measure.energy import energy
from prunekit.methods import RunContext, get_method, load_all
from prunekit.train.baseline import load_baseline

load_all()


def accuracy(m, batches) -> float:
    m.eval()
    with torch.no_grad():
        return sum(int((m(x).argmax(1) == y).sum()) for x, y in batches) / sum(len(y) for _, y in batches)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--rows", nargs="+", default=["energy-aware", "magnitude", "dmc", "gfs", "l1", "random"])
    ap.add_argument("--sparsity", type=float, default=0.8)
    ap.add_argument("--target", default="macs=0.5")
    ap.add_argument("--train", type=int, default=10000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--gfs-batch", type=int, default=32)  # the greedy additions' mini-batch (one per addition)
    ap.add_argument("--out", default="benchmarks/results/search_c_checks.jsonl")
    ap.add_argument("--summary", action="store_true", help="print mean +- std per row of --out and exit")
    a = ap.parse_args()
    if a.summary:
        return summary(Path(a.out))
    torch.set_num_threads(1)
    out = Path(a.out)
    done = {(r["seed"], r["row"]) for r in map(json.loads, out.read_text().splitlines())} if out.exists() else set()
    out.parent.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(1, 1, 28, 28)
    for seed in a.seeds:
        data = pk.data.load("fashion-mnist", batch_size=128, subset=(a.train + 512, a.test), seed=seed,
                            val_fraction=512 / (a.train + 512))
        train, val, test = list(data.train), list(data.val), first_examples(data.test, a.test)
        calib = train[:4]
        dense = load_baseline("lenet5-fashion-mnist")
        dense_acc, dense_macs, dense_energy = accuracy(dense, test), build_graph(dense, x).macs(), energy(dense, x)
        for row in a.rows:
            if (seed, row) in done:
                continue
            m = copy.deepcopy(dense)
            t0 = time.time()
            rec = {"seed": seed, "row": row, "dense_acc": dense_acc, "epochs_before": 0.0}
            ctx = dict(model=m, example_inputs=x, calib=calib, train_data=train, val_data=val, seed=seed,
                       ignore=("fc2",), prune_epochs=1,
                       train_config=pk.TrainConfig(epochs=1, lr=a.lr, progress=False))
            if row == "energy-aware":
                res = get_method(row).run(RunContext(target=f"sparsity={a.sparsity}", **ctx))
                rec["telemetry"] = {k: v for k, v in res.telemetry.items()}
            elif row == "magnitude":
                pk.sparsify_(m, sparsity=a.sparsity, criterion="magnitude", global_=True, ignore=["fc2"])
            elif row in ("dmc", "gfs"):
                if row == "gfs":  # smaller mini-batches for the 50 candidate forwards of every addition
                    ctx["train_data"] = [(xb[i:i + a.gfs_batch], yb[i:i + a.gfs_batch]) for xb, yb in train
                                         for i in range(0, len(yb), a.gfs_batch)]
                res = get_method(row).run(RunContext(target=a.target, **ctx))
                rec["telemetry"] = {k: v for k, v in res.telemetry.items() if k != "cost_curve"}
                rec["engaged"] = res.engaged
                if row == "dmc":
                    rec["epochs_before"] = 1.0
                else:
                    rec["epochs_before"] = round(res.info["layer_finetune_batches"] * len(res.info["caps"])
                                                 / len(ctx["train_data"]), 3)  # the per-layer fine-tunes
            else:
                pk.prune_(m, example_inputs=x, criterion=row, target=a.target, ignore=["fc2"], seed=seed)
            rec["cut_seconds"] = round(time.time() - t0, 1)
            rec["macs"] = build_graph(m, x).macs() / dense_macs
            rec["energy"] = energy(m, x) / dense_energy
            rec["sparsity"] = sum(int((p == 0).sum()) for p in m.parameters()) / sum(p.numel() for p in m.parameters())
            rec["acc_cut"] = accuracy(m, test)
            pk.train.fit(m, train, pk.TrainConfig(epochs=a.epochs, lr=a.lr, progress=False, seed=seed))
            rec["acc_ft"] = accuracy(m, test)
            rec["energy_after_ft"] = energy(m, x) / dense_energy
            rec["seconds"] = round(time.time() - t0, 1)
            print(json.dumps(rec), flush=True)
            with out.open("a") as f:
                f.write(json.dumps(rec) + "\n")


def summary(path: Path) -> None:
    """One markdown line per row: seeds, MACs and proxy energy kept, accuracy after the cut and after the
    fine-tune (percent, mean +- std over the seeds)."""
    import statistics

    rows: dict = {}
    for r in map(json.loads, path.read_text().splitlines()):
        rows.setdefault(r["row"], []).append(r)

    def ms(vals, scale=1.0, nd=2):
        vals = [v * scale for v in vals]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.{nd}f} +- {sd:.{nd}f}"

    print("| row | seeds | MACs kept | energy kept | acc. after cut | acc. after fine-tune |")
    print("|---|---|---|---|---|---|")
    for row, rs in rows.items():
        print(f"| {row} | {len(rs)} | {ms([r['macs'] for r in rs], nd=3)} | {ms([r['energy'] for r in rs], nd=3)} | "
              f"{ms([r['acc_cut'] for r in rs], 100)} | {ms([r['acc_ft'] for r in rs], 100)} |")


if __name__ == "__main__":
    main()
