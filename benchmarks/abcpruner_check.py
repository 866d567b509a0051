"""The abcpruner entry check, scaled: the shipped VGG-small / Fashion-MNIST at half the MACs, one JSON line per row.

Protocol (the entry's small-scale check, scaled to what one shared CPU core runs in minutes: the entry asks for
6 food sources, 8 cycles and 100 fitness steps): per seed, ABCPruner with ``--food`` sources, ``--cycles``
cycles, ``--steps`` fitness steps (SGD lr 0.01, batch 64) and max_preserve 7, scored on ``--val`` held-out
training images, searches the widths at ``--target``; then (rows) the ABC structure, the best of a random
search with the same number of scored candidates (random codes, the colony with no cycle) and the uniform
widths of the same criterion at the ABC structure's MACs (ABC's compression comes from max_preserve, so its
structure lands below the target) each get the same training: the fitness steps (already spent
by the two searches' winners), then ``--epochs`` fine-tune epochs (SGD lr 0.01, cosine); accuracy on ``--test``
test images. Entry's asserts: (a) the best fitness never falls over the cycles and the final best beats the
initial population's best; (b) ABC >= uniform after the fine-tune on average over the seeds; (c) every kept
width is on the code grid. Finished rows in ``--out`` are not run again.

Usage: nice python benchmarks/abcpruner_check.py [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

import prunekit as pk
from prunekit.api import Subnets
from prunekit.data import first_batches, first_examples
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.abcpruner import code_widths
from prunekit.train.baseline import load_baseline

load_all()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--target", default="macs=0.5")
    ap.add_argument("--baseline", default="vgg-small-fashion-mnist")
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--val", type=int, default=500)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--food", type=int, default=4)
    ap.add_argument("--cycles", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounding", default="truncate", choices=["truncate", "nearest"])
    ap.add_argument("--out", default="benchmarks/results/abcpruner_check.jsonl")
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    done = {(r["seed"], r["row"]) for r in rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    evaluations = a.food + a.cycles * (2 * a.food + 1)
    for seed in a.seeds:
        data = pk.data.load("fashion-mnist", batch_size=64, subset=a.train + a.val, seed=seed,
                            val_fraction=a.val / (a.train + a.val))
        train, val = first_examples(data.train, a.train), first_examples(data.val, a.val)
        test, x = first_examples(data.test, a.test), data.example_inputs(2)
        opts = {"food_number": a.food, "max_cycle": a.cycles, "fitness_steps": a.steps, "max_preserve": 7,
                "val_images": a.val, "rounding": a.rounding}
        for row, extra in (("abc", {}), ("random", {"food_number": evaluations, "max_cycle": 0})):
            if (seed, row) in done:
                continue
            t0 = time.perf_counter()
            m = load_baseline(a.baseline)
            res = get_method("abcpruner").run(RunContext(model=m, example_inputs=x, target=a.target, train_data=train,
                                                         val_data=val, seed=seed, options={**opts, **extra}))
            dense = list(res.info["dense_widths"].values())
            grid = [set(code_widths([w] * 7, range(1, 8))) for w in dense]
            _finish(out, m, train, test, a, seed, row, t0, {
                **res.telemetry, "engaged": res.engaged, "widths": list(res.info["widths"].values()),
                "best_so_far": res.info["best_so_far"], "search_seconds": res.telemetry["search_seconds"],
                "on_grid": all(w in g for w, g in zip(res.info["widths"].values(), grid)),
                "cost": res.telemetry["best_cost"]})
        if (seed, "uniform") not in done:
            t0 = time.perf_counter()
            m = load_baseline(a.baseline)
            sub = Subnets(m, x, criterion="random", seed=seed)
            abc_cost = next(json.loads(line) for line in out.read_text().splitlines()
                            if json.loads(line)["seed"] == seed and json.loads(line)["row"] == "abc")["cost"]
            widths = sub.uniform_at(f"macs={abc_cost:.6f}")  # the entry: uniform widths at the ABC structure's MACs
            cost = sub.cost(widths, "macs")
            pk.prune_(m, sub.plan(widths))
            pk.fit(m, [train[i % len(train)] for i in range(a.steps)],
                   pk.TrainConfig(epochs=1, lr=0.01, momentum=0.9, weight_decay=5e-4, scheduler="constant",
                                  seed=seed, progress=False))  # the fitness steps the searches' winners had
            _finish(out, m, train, test, a, seed, "uniform", t0, {"widths": list(widths), "cost": cost})
    summarise(out, a)


def _finish(out, m, train, test, a, seed, row, t0, extra):
    acc_search = pk.evaluate(m, test)["accuracy"]
    pk.fit(m, train, pk.TrainConfig(epochs=a.epochs, lr=0.01, seed=seed, progress=False))
    rec = {"seed": seed, "row": row, "target": a.target, "acc_before_finetune": acc_search,
           "acc_finetuned": pk.evaluate(m, test)["accuracy"], **extra, "seconds": time.perf_counter() - t0}
    with out.open("a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps({k: v for k, v in rec.items() if k != "best_so_far"}), flush=True)


def summarise(out: Path, a) -> None:
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    md = ["# ABCPruner's entry check, scaled (VGG-small / Fashion-MNIST, half the MACs)", "",
          f"Command: `python benchmarks/abcpruner_check.py --food {a.food} --cycles {a.cycles} --steps {a.steps} "
          f"--rounding {a.rounding} --out {out}` (resumable). {a.food} food sources, {a.cycles} cycles "
          f"({a.food + a.cycles * (2 * a.food + 1)} candidates at most), {a.steps} fitness steps (SGD lr "
          f"0.01, batch 64), max_preserve 7, moves made ints by {a.rounding}, fitness on 500 held-out training "
          "images; the random search scores as many random codes the same way; the uniform widths (random channels) are cut at the ABC structure's MACs and "
          "get the same fitness steps too; every row then fine-tunes 2 epochs on 3,000 training images (SGD lr "
          "0.01, cosine); accuracy on 2,000 test images.", "",
          "| seed | row | MACs kept | initial best | best fitness | scouts | before fine-tune | after fine-tune | "
          "on grid | widths |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["seed"], r["row"])):
        md.append(f"| {r['seed']} | {r['row']} | {r['cost']:.3f} | {_pct(r.get('initial_best'))} | "
                  f"{_pct(r.get('best_score'))} | {r.get('scouts', '')} | {100 * r['acc_before_finetune']:.2f}% | "
                  f"{100 * r['acc_finetuned']:.2f}% | {r.get('on_grid', '')} | {r['widths']} |")
    md += ["", "| row | seeds | after fine-tune (mean) | std |", "|---|---|---|---|"]
    for row in ("abc", "random", "uniform"):
        sel = [r["acc_finetuned"] for r in rows if r["row"] == row]
        if sel:
            md.append(f"| {row} | {len(sel)} | {100 * np.mean(sel):.2f}% | {100 * np.std(sel):.2f} |")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def _pct(v):
    return "" if v is None else f"{100 * v:.2f}%"


if __name__ == "__main__":
    main()
