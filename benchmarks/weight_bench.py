"""Weight-pruning accuracy grid through the `prunekit bench` protocol (prunekit/bench/protocol.py).

LeNet-300-100 on Fashion-MNIST from the shipped trained baseline (`baselines/lenet300-fashion-mnist`),
prunekit's weight methods beside torch.nn.utils.prune global magnitude, 90-98% sparsity, 3 seeds.
Scaled protocol (2 shared CPU cores): 10,000 training images (no augmentation, like the baseline), 1 epoch for training-time methods, 2 epochs
of fine-tuning (SGD momentum 0.9, cosine, lr 0.01); every accuracy on the complete 10,000-image test set.

Resumable: finished cells are kept in <out>.cells/ and skipped on the next run.

Usage: python benchmarks/weight_bench.py [--out runs/weight_lenet300] [--limit N]
"""
from __future__ import annotations

import argparse
import json
import logging

GRID = {
    "name": "Weight pruning, LeNet-300-100 / Fashion-MNIST",
    "model": "lenet300",
    "data": "fashion-mnist",
    "baseline": "lenet300-fashion-mnist",
    "methods": ["han-magnitude", "agp", "dns", "lr-rewinding", "deep-compression", "criterion:magnitude",
                "torch-prune:global-magnitude"],
    "targets": ["sparsity=0.9", "sparsity=0.92", "sparsity=0.95", "sparsity=0.98"],
    "seeds": [0, 1, 2],
    "prune_epochs": 1,
    "finetune_epochs": 2,
    "lr": 0.01,
    "batch_size": 128,
    "subset": 10000,
    "calib_batches": 1,
    "latency": False,
    "data_options": {"augment": False},  # the shipped baseline was trained without augmentation
    "options": {"han-magnitude": {"rounds": 3, "retrain_epochs": 1}, "lr-rewinding": {"rate": 0.5}},
}


def main():
    import torch

    from prunekit.bench import BenchGrid, run_grid

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/weight_lenet300")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    grid = BenchGrid(**GRID, out=args.out)
    res = run_grid(grid, out=args.out, progress=False, limit=args.limit,
                   command=f"python benchmarks/weight_bench.py --out {args.out}")
    print(json.dumps({k: str(v) for k, v in res.items()}, indent=1))


if __name__ == "__main__":
    main()
