"""The autocompress entry check, scaled: the shipped VGG-small / Fashion-MNIST at a quarter of the MACs.

Protocol (the entry's small-scale check on ``--train`` training images): per seed, AutoCompress anneals
``--steps`` moves over the per-layer rates at ``--target`` (adaptive BN on 20 batches, accuracy on ``--val``
held-out training images), runs ADMM structured pruning to the chosen rates for ``--admm-epochs`` epochs
(Adam lr 1e-3, rho ``--rho``, Z/U updated every epoch), cuts, recalibrates BN, then retrains ``--epochs`` epochs (SGD lr
0.01, cosine). The ``uniform`` row is the same pipeline with no annealing move (the annealer starts at the
uniform rates), so the two rows differ only in the searched rates. Entry's asserts: (a) the projection keeps
exactly the k largest-norm filters (unit test); (b) after ADMM ||W - Z|| / ||W|| < 0.05, so the hard cut costs
< 1 pt; (c) the searched rates beat the uniform rates at the same MACs (>= 0 pt over 3 seeds). Accuracy on
``--test`` test images. Finished rows in ``--out`` are not run again.

Usage: nice python benchmarks/autocompress_check.py [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import prunekit as pk
from prunekit.data import first_examples
from prunekit.methods import RunContext, get_method, load_all
from prunekit.train.baseline import load_baseline

load_all()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--target", default="macs=0.25")
    ap.add_argument("--baseline", default="vgg-small-fashion-mnist")
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--val", type=int, default=500)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--admm-epochs", type=int, default=3)
    ap.add_argument("--rho", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/autocompress_check.jsonl")
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    done = {(r["seed"], r["row"], r["rho"]) for r in map(json.loads, out.read_text().splitlines())} \
        if out.exists() else set()
    out.parent.mkdir(parents=True, exist_ok=True)
    for seed in a.seeds:
        data = pk.data.load("fashion-mnist", batch_size=64, subset=a.train + a.val, seed=seed,
                            val_fraction=a.val / (a.train + a.val))
        train, val = first_examples(data.train, a.train), first_examples(data.val, a.val)
        test = first_examples(data.test, a.test)
        for row, steps in (("autocompress", a.steps), ("uniform", 0)):
            if (seed, row, a.rho) in done:
                continue
            t0 = time.perf_counter()
            m = load_baseline(a.baseline)
            res = get_method("autocompress").run(RunContext(
                model=m, example_inputs=data.example_inputs(2), target=a.target, train_data=train, val_data=val,
                seed=seed, prune_epochs=a.admm_epochs,
                train_config=pk.TrainConfig(progress=False),
                options={"annealing_steps": steps, "rho": a.rho, "val_images": a.val}))
            r0 = res.info["rounds"][0]
            cut = pk.evaluate(m, test)["accuracy"]
            pk.fit(m, train, pk.TrainConfig(epochs=a.epochs, lr=0.01, seed=seed, progress=False))
            rec = {"seed": seed, "row": row, "rho": a.rho, "target": a.target, **res.telemetry,
                   "engaged": res.engaged, "cost": r0["cost"], "widths": r0["kept"],
                   "uniform_widths": r0["uniform_widths"], "scores": r0["scores"],
                   "rel_gaps": [h["rel_gap"] for h in res.info["history"][0]],
                   "acc_after_cut_stale_bn": r0["acc_after_cut_stale_bn"], "test_after_cut": cut,
                   "test_finetuned": pk.evaluate(m, test)["accuracy"], "seconds": time.perf_counter() - t0}
            with out.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            print(json.dumps({k: v for k, v in rec.items() if k not in ("scores", "rel_gaps")}), flush=True)
    summarise(out)


def summarise(out: Path) -> None:
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    md = ["# AutoCompress's entry check, scaled (VGG-small / Fashion-MNIST, a quarter of the MACs)", "",
          "Command: `python benchmarks/autocompress_check.py --seeds 0 1 2 [--rho R]` (resumable; rows in "
          "`autocompress_check.jsonl`). 3,000 training images, 500 held out; 8 annealing moves (T0 0.02, "
          "cooling 0.9, adaptive BN on 20 batches); ADMM 3 epochs (Adam lr 1e-3, Z/U every epoch); cut, BN "
          "recalibrated; 2 retrain epochs (SGD lr 0.01, cosine); accuracy on 2,000 test images. `uniform`: the "
          "same pipeline without annealing moves.", "",
          "| seed | row | rho | MACs kept | accepted/rejected | ADMM rel. gap first -> last | held-out acc. before "
          "cut | after cut (stale BN) | after cut (BN recal.) | test after retrain | widths |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["rho"], r["seed"], r["row"])):
        md.append(f"| {r['seed']} | {r['row']} | {r['rho']:g} | {r['cost']:.3f} | {r['accepted']}/{r['rejected']} | "
                  f"{r['admm_gap_first']:.3f} -> {r['admm_gap_last']:.3f} | {100 * r['acc_before_cut']:.2f}% | "
                  f"{100 * r['acc_after_cut_stale_bn']:.2f}% | {100 * r['acc_after_cut']:.2f}% | "
                  f"{100 * r['test_finetuned']:.2f}% | {r['widths']} |")
    md += ["", "| rho | row | seeds | test after retrain (mean) | std |", "|---|---|---|---|---|"]
    for rho in sorted({r["rho"] for r in rows}):
        for row in ("autocompress", "uniform"):
            sel = [r["test_finetuned"] for r in rows if r["row"] == row and r["rho"] == rho]
            if sel:
                md.append(f"| {rho:g} | {row} | {len(sel)} | {100 * np.mean(sel):.2f}% | {100 * np.std(sel):.2f} |")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
