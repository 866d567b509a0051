"""Dynamic (per-input) pruning on the shipped small VGG / Fashion-MNIST: FBS, DSG and RNP against a static
L1-pruned model of the same MACs and the dense model (issue 20). Accuracy, executed MACs per input (mean and
spread over the test images) and measured CPU latency (one thread) at batch 1 and batch 32 of the dense
model, the static model, the dynamic model on its gather path (only the kept channels computed) and the same
dynamic model on its masked path (every channel computed, the skipped ones multiplied by zero).

Protocol (scaled to an overloaded 2-core machine): from the shipped baseline, ``--epochs`` epochs on
``--train`` training images at lr 0.01 for every row (the dynamic methods train their predictors and the
network; the static row fine-tunes after a one-shot L1 cut to the same MACs), test on ``--test`` images.
Rows that exist in the results file are kept (resumable).

Usage: nice python benchmarks/dynamic_check.py [--seeds 0] [--target 0.5] [--epochs 1]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import prunekit as pk  # noqa: E402
from prunekit.measure import count_macs, latency  # noqa: E402
from prunekit.methods import RunContext, get_method, load_all  # noqa: E402
from prunekit.surgery.dynamic import gated_units, set_execution  # noqa: E402
from prunekit.methods._dynamic import DenseCost  # noqa: E402
from prunekit.train import TrainConfig, fit  # noqa: E402
from prunekit.train.baseline import load_baseline  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "dynamic_check"


def accuracy(model, batches) -> float:
    model.eval()
    with torch.no_grad():
        return sum(int((model(x).argmax(1) == y).sum()) for x, y in batches) / sum(len(y) for _, y in batches)


def paired(models: dict, x, rounds: int = 5) -> dict:
    """Median over ``rounds`` of each model's median latency, the models timed in turn within each round (so
    every model sees the same machine load)."""
    times = {k: [] for k in models}
    for _ in range(rounds):
        for k, m in models.items():
            times[k].append(latency(m, x, warmup=3, runs=20).median_ms)
    return {k: statistics.median(v) for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--train", type=int, default=5000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--rows", nargs="+", default=["dense", "static-l1", "fbs", "dsg", "rnp"])
    a = ap.parse_args()
    torch.set_num_threads(1)
    load_all()
    OUT.mkdir(parents=True, exist_ok=True)
    res_path = OUT / f"results_t{a.target:g}_e{a.epochs}.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    data = pk.data.load("fashion-mnist", subset=(a.train, a.test), batch_size=128, val_fraction=0.0)
    test = list(data.test)
    x1, x32 = test[0][0][:1], test[0][0][:32]
    dense = load_baseline("vgg-small-fashion-mnist")
    dense_macs = count_macs(dense, x1).total
    cfg = TrainConfig(epochs=a.epochs, lr=0.01, scheduler="cosine", progress=False)
    for seed in a.seeds:
        for row in a.rows:
            key = f"{row}_s{seed}"
            if key in results:
                continue
            torch.manual_seed(seed)
            model = copy.deepcopy(dense)
            t0 = time.perf_counter()
            rec = {"row": row, "seed": seed}
            if row == "static-l1":
                pk.prune_(model, example_inputs=x1, criterion="l1", target=f"macs={a.target}", ignore=["fc"])
                fit(model, data.train, cfg.replace(seed=seed))
            elif row != "dense":
                spec = get_method(row)
                ctx = RunContext(model=model, example_inputs=x1, target=f"macs={a.target}", train_data=data.train,
                                 calib=data.calib(2, 128), val_data=test[:4], prune_epochs=a.epochs,
                                 train_config=cfg, seed=seed)
                r = spec.run(ctx)
                rec["telemetry"] = r.telemetry
                rec["engaged"] = r.engaged
            rec["train_s"] = time.perf_counter() - t0
            model.eval()
            rec["accuracy"] = accuracy(model, test)
            if gated_units(model):
                cost = DenseCost(dense, x1, list(gated_units(model)))
                fr = torch.cat([cost.fraction(model, x) for x, _ in test])
                rec.update(macs_mean=float(fr.mean()), macs_std=float(fr.std()), macs_min=float(fr.min()),
                           macs_max=float(fr.max()), macs_counter_x1=count_macs(model, x1).total / dense_macs)
                masked = copy.deepcopy(model)
                set_execution(model, "gather")
                set_execution(masked, "masked")
                for b, x in (("b1", x1), ("b32", x32)):
                    t = paired({"ms": model, "masked_ms": masked, "dense_ms": dense}, x)
                    rec.update({f"lat_{b}_{k}": v for k, v in t.items()})
            else:
                rec["macs_mean"] = count_macs(model, x1).total / dense_macs
                for b, x in (("b1", x1), ("b32", x32)):
                    t = paired({"ms": model, "dense_ms": dense}, x)
                    rec.update({f"lat_{b}_{k}": v for k, v in t.items()})
            results[key] = rec
            res_path.write_text(json.dumps(results, indent=1))
            print(key, {k: v for k, v in rec.items() if k != "telemetry"}, flush=True)


if __name__ == "__main__":
    main()
