"""Weight pruning part 2 (LAP, DPF, GSM, STR, ProxSGD, L-OBS, DARB, deconstructed tickets) against magnitude.

Runs the `prunekit bench` protocol (prunekit/bench/protocol.py) on LeNet-300-100 / Fashion-MNIST from the
shipped trained baseline (`baselines/lenet300-fashion-mnist`), at 90/95/98% sparsity, with one-shot
magnitude pruning (`criterion:magnitude`, layer-wise) and torch.nn.utils.prune global magnitude as peers
in the same run. Short budget for 2 shared CPU cores: 10,000 training images, 1 epoch for the methods that
train while pruning, 2 epochs of fine-tuning (SGD momentum 0.9, cosine, lr 0.01); every accuracy on the
complete 10,000-image test set.

Resumable: finished cells are kept in <out>.cells/ and skipped on the next run.

Usage: nice python benchmarks/weight2_lenet300.py [--out runs/weight2_lenet300] [--seeds 0 1 2] [--limit N]
"""
from __future__ import annotations

import argparse
import json
import logging

GRID = {
    "name": "Weight pruning part 2, LeNet-300-100 / Fashion-MNIST",
    "model": "lenet300",
    "data": "fashion-mnist",
    "baseline": "lenet300-fashion-mnist",
    "methods": ["lap", "l-obs", "darb", "deconstruct-lt", "dpf", "gsm", "str", "proxsgd", "criterion:magnitude",
                "torch-prune:global-magnitude"],
    "targets": ["sparsity=0.9", "sparsity=0.95", "sparsity=0.98"],
    "seeds": [0],
    "prune_epochs": 1,
    "finetune_epochs": 2,
    "lr": 0.01,
    "batch_size": 128,
    "subset": 10000,
    "calib_batches": 8,
    "latency": False,
    "options": {
        "lap": {"rounds": 2, "retrain_epochs": 1},  # 1 epoch of retraining inside the method, like the others
        "gsm": {"lr": 0.01},  # the paper's LeNet-300-100 learning rate (momentum 0.99)
    },
}


def main():
    import torch

    from prunekit.bench import BenchGrid, run_grid

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/weight2_lenet300")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    grid = BenchGrid(**{**GRID, "seeds": args.seeds}, out=args.out)
    seeds = " ".join(str(s) for s in args.seeds)
    res = run_grid(grid, out=args.out, progress=False, limit=args.limit,
                   command=f"python benchmarks/weight2_lenet300.py --out {args.out} --seeds {seeds}")
    print(json.dumps({k: str(v) for k, v in res.items()}, indent=1))


if __name__ == "__main__":
    main()
