"""The legr entry check on the shipped ResNet-20 / Fashion-MNIST (issue 17), one JSON line per row.

Protocol (the entry's small-scale check): per seed, LeGR's evolution (population 16, sample 4, 40 candidates,
tau_hat 20 SGD steps, safeguard 10%) learns the layer maps at ``--search-target``; the record gives (a) the
best loss against the identity map's (the plain global squared-L2 ranking). The learned maps then rank
filters at each of ``--targets`` (the same maps reused, LeGR's one-search-many-targets property) against
the identity map at the same target (b): both cut the baseline, recalibrate BN on 8 training batches and
fine-tune ``--epochs`` epochs (SGD lr ``--lr``, cosine, batch 128) on ``--train`` training images; accuracy
on ``--test`` test images. (c) every layer keeps >= 10% of its channels. Finished rows in ``--out`` are
not run again.

Usage: nice python benchmarks/legr_check.py [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import prunekit as pk
from prunekit.allocate.search import global_ranking_widths
from prunekit.api import Subnets
from prunekit.data import first_batches, first_examples
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.legr import transformed_scores
from prunekit.train.baseline import load_baseline
from prunekit.train.subnet_eval import recalibrate_bn

load_all()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--search-target", default="macs=0.5")
    ap.add_argument("--targets", nargs="+", default=["macs=0.7", "macs=0.5"])
    ap.add_argument("--train", type=int, default=4500)
    ap.add_argument("--val", type=int, default=500)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--generations", type=int, default=40)
    ap.add_argument("--population", type=int, default=16)
    ap.add_argument("--out", default="benchmarks/results/legr_check.jsonl")
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    done = {(r["seed"], r["row"], r["target"]) for r in map(json.loads, out.read_text().splitlines())} \
        if out.exists() else set()
    out.parent.mkdir(parents=True, exist_ok=True)
    for seed in a.seeds:
        data = pk.data.load("fashion-mnist", batch_size=128, subset=a.train + a.val, seed=seed,
                            val_fraction=a.val / (a.train + a.val))
        train, val, test = first_examples(data.train, a.train), first_examples(data.val, a.val), \
            first_examples(data.test, a.test)
        x = data.example_inputs(2)
        maps_row = next((r for r in map(json.loads, out.read_text().splitlines())
                         if r["seed"] == seed and r["row"] == "search"), None) if out.exists() else None
        if maps_row is None:
            t0 = time.perf_counter()
            m = load_baseline("resnet20")
            res = get_method("legr").run(RunContext(
                model=m, example_inputs=x, target=a.search_target, train_data=train, val_data=val, seed=seed,
                options={"population": a.population, "sample": 4, "generations": a.generations, "tau_hat": 20, "val_images": a.val}))
            t = res.telemetry
            maps_row = {"seed": seed, "row": "search", "target": a.search_target, **t,
                        "relative_gain": (t["identity_loss"] - t["best_loss"]) / t["identity_loss"],
                        "alpha": res.info["alpha"], "kappa": res.info["kappa"], "widths": res.info["widths"],
                        "dense_widths": res.info["dense_widths"], "seconds": time.perf_counter() - t0}
            _write(out, maps_row)
        for target in a.targets:
            for row in ("legr", "identity"):
                if (seed, row, target) in done:
                    continue
                t0 = time.perf_counter()
                m = load_baseline("resnet20")
                sub = Subnets(m, x, criterion="l2", max_ratio=0.9)
                base = [s ** 2 for s in sub.scores]
                alpha = maps_row["alpha"] if row == "legr" else [1.0] * len(base)
                kappa = maps_row["kappa"] if row == "legr" else [0.0] * len(base)
                kind, limit = sub.target(target)
                widths = global_ranking_widths(sub.space, transformed_scores(base, alpha, kappa),
                                               lambda w: sub.cost(w, kind), limit)
                pk.prune_(m, sub.plan(widths))
                recalibrate_bn(m, first_batches(train, 8))
                cut = pk.evaluate(m, test)["accuracy"]
                pk.fit(m, train, pk.TrainConfig(epochs=a.epochs, lr=a.lr, seed=seed, progress=False))
                floor_ok = all(w >= 0.1 * d for w, d in zip(widths, sub.space.widths))
                _write(out, {"seed": seed, "row": row, "target": target, "cost": sub.cost(widths, kind),
                             "acc_cut": cut, "acc_finetuned": pk.evaluate(m, test)["accuracy"],
                             "safeguard_held": floor_ok, "widths": list(widths),
                             "seconds": time.perf_counter() - t0})
    summarise(out)


def _write(out: Path, row: dict) -> None:
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k not in ("alpha", "kappa", "widths", "dense_widths")}),
          flush=True)


def summarise(out: Path) -> None:
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    searches = [r for r in rows if r["row"] == "search"]
    md = ["# LeGR's entry check (ResNet-20 / Fashion-MNIST)", "",
          "Command: `python benchmarks/legr_check.py --seeds 0 1 2` (resumable; rows in `legr_check.jsonl`). "
          "Per seed: LeGR's evolution (population 16, sample 4, 40 candidates, tau_hat 20 SGD steps, safeguard "
          "10%) learns the layer maps at the search target on 4,500 training images with 500 held out; the "
          "learned maps and the identity map (plain global squared-L2 ranking) then each cut the baseline at "
          "every target, BN recalibrated on 8 batches, fine-tuned 2 epochs (SGD lr 0.01, cosine), accuracy on "
          "2,000 test images.", "",
          "| seed | search target | best loss | identity loss | relative gain | candidates | search s |",
          "|---|---|---|---|---|---|---|"]
    for r in searches:
        md.append(f"| {r['seed']} | {r['target']} | {r['best_loss']:.4f} | {r['identity_loss']:.4f} | "
                  f"{100 * r['relative_gain']:.1f}% | {r['evaluated']} | {r['search_seconds']:.0f} |")
    md += ["", "| target | ranking | seeds | after the cut (BN recal.) | after fine-tune | std | safeguard held |",
           "|---|---|---|---|---|---|---|"]
    for target in sorted({r["target"] for r in rows if r["row"] != "search"}):
        for row in ("legr", "identity"):
            sel = [r for r in rows if r["row"] == row and r["target"] == target]
            if sel:
                summary = {"target": target, "row": row, "n": len(sel),
                           "acc_cut": float(np.mean([r["acc_cut"] for r in sel])),
                           "acc_finetuned": float(np.mean([r["acc_finetuned"] for r in sel])),
                           "std": float(np.std([r["acc_finetuned"] for r in sel])),
                           "safeguard_held": all(r["safeguard_held"] for r in sel)}
                print(json.dumps(summary))
                md.append(f"| {target} | {'learned maps' if row == 'legr' else 'identity (global L2)'} | {len(sel)} "
                          f"| {100 * summary['acc_cut']:.2f}% | {100 * summary['acc_finetuned']:.2f}% | "
                          f"{100 * summary['std']:.2f} | {summary['safeguard_held']} |")
    md += ["", "Entry's check: (a) relative gain >= 2% over the identity map; (b) the learned maps beat the plain "
               "global ranking at both targets after the fine-tune, on average over the seeds; (c) every layer "
               "keeps >= 10% of its channels."]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
