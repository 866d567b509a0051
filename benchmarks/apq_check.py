"""APQ's feature check (the entry's small-scale check, scaled to this machine's one loaded core).

Protocol: a shipped Fashion-MNIST baseline (``--model``: ``lenet5`` or ``vgg-small``), ``--train`` training
images of which ``--val`` are held out to score configurations (never the test split). ``apq`` runs through
``prunekit.methods`` at its defaults except the counts given here: ``--samples`` random feasible configurations
(per-group widths from {0.25, 0.5, 0.75, 1.0} of each group, per-layer weight bits from {4, 6, 8}) under the
MACs target ``--target`` and BitOps budget ``--bitops`` are measured (masked view, weights quantised, BN
re-estimated on ``--recal`` training batches, accuracy on the held-out images), the predictor is fitted on 80%
of them and its Spearman reported on the other 20%, and the evolution finder (population 100, 500
generations) returns the configuration of highest predicted accuracy, which is then measured the same way.
Then more random feasible configurations are measured until ``--random`` in all (the method's own samples
count: they are random feasible configurations too). Checks of the issue: (a) held-out Spearman >= 0.7; (b) the
searched configuration's measured accuracy >= best random - 0.5 point. One JSON line per stage in ``--out``
(resumable), a Markdown summary beside.

``--verify-top K`` (ours, off by default) measures the K best distinct configurations of the last generation
and keeps the best measured; ``--random-from`` reuses the random stage of a finished check with the same samples.

Usage: nice python benchmarks/apq_check.py [--model lenet5 --samples 200 --random 500]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import prunekit as pk
from prunekit.api import Subnets
from prunekit.data import first_batches, first_examples
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.apq import APQConfig, APQSpace, quantized_weights
from prunekit.train.baseline import load_baseline
from prunekit.train.subnet_eval import SubnetEvaluator

COMMAND = "nice python benchmarks/apq_check.py"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--target", default="macs=0.5")
    ap.add_argument("--bitops", type=float, default=0.35)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--random", type=int, default=500)
    ap.add_argument("--generations", type=int, default=500)
    ap.add_argument("--random-from", default=None, help="a finished check's JSONL whose random stage is reused")
    ap.add_argument("--recal", type=int, default=5)
    ap.add_argument("--val", type=int, default=1000)
    ap.add_argument("--train", type=int, default=5000)
    ap.add_argument("--verify-top", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    out = Path(a.out or f"benchmarks/results/apq_check_{a.model}" + (f"_top{a.verify_top}" if a.verify_top else "")
               + ".jsonl")
    torch.set_num_threads(1)
    load_all()
    data = pk.data.load("fashion-mnist", batch_size=128, subset=a.train, seed=a.seed, val_fraction=a.val / a.train)
    train, val = list(data.train), first_examples(data.val, a.val)
    x = data.example_inputs(2)
    base = f"{a.model}-fashion-mnist"
    rows = {json.loads(l)["stage"]: json.loads(l) for l in out.read_text().splitlines()} if out.exists() else {}

    def save(row):
        rows[row["stage"]] = row
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")

    settings = {k: getattr(a, k) for k in ("model", "target", "bitops", "samples", "random", "generations", "recal",
                                            "val", "train", "seed", "verify_top")}
    if "apq" not in rows:
        model = load_baseline(base)
        t0 = time.time()
        ctx = RunContext(model=model, example_inputs=x, target=a.target, train_data=train, val_data=val, seed=a.seed,
                         options={"samples": a.samples, "bitops": a.bitops, "generations": a.generations,
                                  "recal_batches": a.recal, "val_images": a.val, "verify_top": a.verify_top})
        res = get_method("apq").run(ctx)
        save({"stage": "apq", **settings, "telemetry": res.telemetry, "engaged": res.engaged,
              "widths": res.info["widths"], "bits": res.info["bits"], "predictor": res.info["predictor"],
              "sampled": res.info["sampled"], "seconds": time.time() - t0, "command": COMMAND})
    if "random" not in rows and a.random_from:  # the same random configurations, measured the same way
        prev = [json.loads(l) for l in Path(a.random_from).read_text().splitlines()]
        prev_sampled = next(r for r in prev if r["stage"] == "apq")["sampled"]
        if prev_sampled != rows["apq"]["sampled"]:
            raise SystemExit("--random-from: that check measured other samples; run without it")
        save(dict(next(r for r in prev if r["stage"] == "random"), **{"reused_from": a.random_from}))
    if "random" not in rows:
        model = load_baseline(base)
        cfg = APQConfig()
        subnets = Subnets(model, x, criterion=cfg.criterion, seed=a.seed)
        kind, limit = a.target.split("=")[0], float(a.target.split("=")[1])
        space = APQSpace(subnets, kind, cfg.width_choices, cfg.bit_choices)
        evaluator = SubnetEvaluator(first_batches(train, a.recal), val)
        seen = {tuple(s["config"]) for s in rows["apq"]["sampled"]}
        rng = np.random.default_rng(a.seed + 1000)
        accs, t0 = [], time.time()
        while len(seen) < a.random:
            c = space.encoding.random(rng)
            cost, bitops = space.costs(c)
            if c in seen or cost > limit + 1e-12 or bitops > a.bitops + 1e-12:
                continue
            seen.add(c)
            with subnets.masked(space.widths(c)) as v, quantized_weights(v, space.bits(c)):
                accs.append(evaluator(v))
        save({"stage": "random", **settings, "extra": len(accs), "accuracies": accs, "seconds": time.time() - t0,
              "command": COMMAND})
    r, t = rows["apq"], rows["apq"]["telemetry"]
    random_accs = [s["accuracy"] for s in r["sampled"]] + rows["random"]["accuracies"]
    best_random = max(random_accs)
    checks = {"a_spearman_ge_0.7": t["predictor_val_spearman"] >= 0.7,
              "b_searched_within_0.5pt_of_best_random": t["best_measured"] >= best_random - 0.005}
    md = [f"# APQ feature check ({base}, {a.target}, BitOps <= {a.bitops})", "",
          f"Command: `{COMMAND} --model {a.model} --samples {a.samples} --random {a.random} --recal {a.recal} "
          f"--val {a.val} --train {a.train} --verify-top {a.verify_top}`", "",
          "| measured to fit | held-out Spearman | train Spearman | searched (measured) | searched (predicted) | "
          "best of random | median random | random measured | searched MACs / BitOps / mean bits |",
          "|---|---|---|---|---|---|---|---|---|",
          f"| {r['predictor']['n_train']} + {r['predictor']['n_val']} | {t['predictor_val_spearman']:.3f} | "
          f"{t['predictor_train_spearman']:.3f} | {100 * t['best_measured']:.2f} | {100 * t['best_predicted']:.2f} | "
          f"{100 * best_random:.2f} | {100 * float(np.median(random_accs)):.2f} | {len(random_accs)} | "
          f"{t['macs']:.3f} / {t['bitops']:.3f} / {t['mean_bits']:.2f} |", "",
          f"Searched widths {r['widths']}, bits {r['bits']}.", "",
          "Checks: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items())]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
