"""Throughput of prunekit's fit() against a bare hand-written PyTorch loop on the same model and batches.

The two loops alternate in one process (fit, bare, fit, bare, ...), each round training a fresh copy of
the same model on the same pre-built batches with the same optimizer and per-step schedule; the result is
the median over rounds of (fit images/s) / (bare images/s). Goal: fit within 5 % of the bare loop.

    python benchmarks/fit_throughput.py --model lenet5 --batches 60 --rounds 7 --out benchmarks/results/fit_throughput.json
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def bare_loop(model, batches, lr: float, momentum: float, weight_decay: float) -> float:
    """The hand-written reference: SGD + per-step cosine schedule, nothing else. Returns seconds."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    total = len(batches)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0))))
    model.train()
    t0 = time.perf_counter()
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return time.perf_counter() - t0


def prunekit_fit(model, batches, lr: float, momentum: float, weight_decay: float) -> float:
    from prunekit.train import TrainConfig, fit

    cfg = TrainConfig(epochs=1, lr=lr, momentum=momentum, weight_decay=weight_decay, scheduler="cosine",
                      progress=False)
    t0 = time.perf_counter()
    fit(model, batches, cfg)
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lenet5")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batches", type=int, default=60, help="batches per timed run")
    p.add_argument("--rounds", type=int, default=7, help="fit/bare pairs (after one warm-up pair)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the result JSON here")
    args = p.parse_args(argv)

    from prunekit import data, models

    torch.set_num_threads(args.threads)
    bundle = data.load(args.data, batch_size=args.batch_size, subset=args.batch_size * args.batches,
                       val_fraction=0.0, augment="none")
    batches = [(x.clone(), y.clone()) for x, y in bundle.train][: args.batches]
    images = sum(len(y) for _, y in batches)
    torch.manual_seed(0)
    base = models.create(args.model, num_classes=bundle.num_classes, in_channels=bundle.in_channels,
                         input_size=bundle.input_size)
    hp = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
    prunekit_fit(copy.deepcopy(base), batches[:5], **hp)  # warm-up: allocator, kernels, lazy imports
    bare_loop(copy.deepcopy(base), batches[:5], **hp)
    rows = []
    for r in range(args.rounds):
        order = [("fit", prunekit_fit), ("bare", bare_loop)]
        if r % 2:  # alternate which goes first, so drift does not favour one side
            order.reverse()
        t = {name: fn(copy.deepcopy(base), batches, **hp) for name, fn in order}
        rows.append({"fit_ips": images / t["fit"], "bare_ips": images / t["bare"], "ratio": t["bare"] / t["fit"]})
    ratio = statistics.median(r["ratio"] for r in rows)
    result = {"model": args.model, "data": args.data, "batch_size": args.batch_size, "batches": len(batches),
              "rounds": args.rounds, "threads": args.threads, "median_ratio_fit_over_bare": ratio,
              "median_fit_images_per_s": statistics.median(r["fit_ips"] for r in rows),
              "median_bare_images_per_s": statistics.median(r["bare_ips"] for r in rows),
              "ratios": [r["ratio"] for r in rows], "torch": torch.__version__, "python": platform.python_version(),
              "command": "python benchmarks/fit_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    text = json.dumps(result, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
