"""reptile-dsd's small-scale check (docs/methods-meta-1.md), scaled to the shared 2-core machine.

Entry: 5-way 1-shot tasks from Fashion-MNIST, meta-train on 6 classes, meta-test on the other 4 + 1 reused class,
Conv-4 with 64 channels, 2k Reptile iterations; DSD/IHT against dense Reptile: (a) exact sparsity and zeros in the
masked phase, (b) meta-train - meta-test gap of DSD/IHT <= dense Reptile's, (c) DSD's meta-test accuracy >= dense
Reptile's - 1 pt.

Scaled (one thread on a loaded 2-core machine): images average-pooled to 14x14, Conv-4 with 32 channels
(conv3x3-BN-ReLU-maxpool x 4, a VGG block stack), ITERATIONS meta-iterations (not 2,000) with the paper's inner
settings (Adam lr 1e-3 with beta1 = 0, 8 inner steps of batch 10 on 15 shots, meta-batch 5, meta step 1 -> 0),
the phase boundaries at the scripts' fractions (DSD: mask at 30%, lifted at 90%; IHT: first mask at 20%,
intervals of 20%, 75% of each sparse), compress rate 0.3 (the scripts'), a 6,000-image train subset as the task
pool. Evaluation: EPISODES 5-way 1-shot tasks per split, 50 Adam steps of batch 5 on the support set,
transductive, 5 queries per class (reference: 1; more queries for a smaller error bar). Dense Reptile is the same
method with the mask never computed (sparse_iter = iterations).

One cell per (variant, seed), written to benchmarks/results/reptile_check.json as it finishes (resumable).
Usage: nice -n 15 python benchmarks/reptile_check.py [--seeds 0 1] [--only dense dsd iht]
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time
import warnings

import torch
import torch.nn.functional as F

import prunekit as pk
from prunekit.errors import MechanismWarning
from prunekit.methods import RunContext, get_method, load_all
from prunekit.models.cnn import VGG

OUT = pathlib.Path(__file__).parent / "results" / "reptile_check.json"
ITERATIONS = 200
EPISODES = 40
WIDTH = 32
RATE = 0.3
COMMON = {"iterations": ITERATIONS, "eval_episodes": EPISODES, "queries": 5}
VARIANTS = {
    "dense": {"variant": "dsd", "sparse_iter": ITERATIONS},
    "dsd": {"variant": "dsd", "sparse_iter": int(0.3 * ITERATIONS), "retrain_iter": int(0.9 * ITERATIONS)},
    "iht": {"variant": "iht", "sparse_iter": int(0.2 * ITERATIONS), "sparse_interval": int(0.2 * ITERATIONS),
            "ratio": 0.75, "init_rate": 0.1},
}


def conv4(width: int = WIDTH, ways: int = 5) -> torch.nn.Module:
    return VGG([width, "M", width, "M", width, "M", width, "M"], num_classes=ways, in_channels=1, input_size=14)


def task_pool() -> list:
    b = pk.data.load("fashion-mnist", batch_size=500, subset=(6000, 10), val_fraction=0.0, augment=False)
    return [(F.avg_pool2d(x, 2), y) for x, y in b.train]


def run_cell(variant: str, seed: int, pool) -> dict:
    torch.manual_seed(seed)
    model = conv4()
    ctx = RunContext(model=model, example_inputs=pool[0][0][:2], target=f"sparsity={RATE}", train_data=pool,
                     seed=seed, options={**COMMON, **VARIANTS[variant]})
    t = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MechanismWarning)  # dense Reptile: no mask, by design
        res = get_method("reptile-dsd").run(ctx)
    return {"variant": variant, "seed": seed, "options": {**COMMON, **VARIANTS[variant]},
            **{k: res.info[k] for k in ("meta_train_accuracy", "meta_test_accuracy", "gap", "rates", "phases",
                                        "classes", "ends_sparse")},
            "telemetry": res.telemetry, "engaged": res.engaged, "seconds": round(time.time() - t, 1)}


def table(results: dict) -> str:
    lines = ["| variant | seed | meta-train acc. % | meta-test acc. % | gap (pt) | masked iterations | max abs masked "
             "weight | zeros in pruned layers (masked phase) |", "|---|---|---|---|---|---|---|---|"]
    for r in results.values():
        t = r["telemetry"]
        lines.append(f"| {r['variant']} | {r['seed']} | {100 * r['meta_train_accuracy']:.1f} | "
                     f"{100 * r['meta_test_accuracy']:.1f} | {100 * r['gap']:.1f} | {t['sparse_iterations']} | "
                     f"{t['max_masked_abs']} | {t['realised_sparsity']:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=list(VARIANTS))
    ap.add_argument("--seeds", nargs="*", type=int, default=[0])
    ap.add_argument("--table", action="store_true", help="only print the Markdown table of the finished cells")
    args = ap.parse_args()
    torch.set_num_threads(1)
    load_all()
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    if not args.table:
        pool = task_pool()
        for seed in args.seeds:
            for variant in args.only:
                key = f"{variant} | seed={seed}"
                if key not in results:
                    results[key] = run_cell(variant, seed, pool)
                    OUT.write_text(json.dumps(results, indent=1))
    print(table(results))
