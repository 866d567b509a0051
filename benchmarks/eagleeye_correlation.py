"""EagleEye's claim, measured (issue 17): does adaptive-BN accuracy predict the accuracy after fine-tuning?

Protocol (the entry's small-scale check): the shipped ResNet-20 baseline on Fashion-MNIST; ``--candidates``
random strategies at ``--target`` (EagleEye's sampler: a pruning ratio per prunable group from U(0, R), the
paper's R for the target, L1-norm filters inside a group, only strategies within ``--window`` below the
target kept; seeded per candidate). For each candidate: (i) vanilla accuracy (the masked view with the dense
BatchNorm statistics), (ii) adaptive-BN accuracy (``--recal`` training batches re-estimate BN first), both on
``--val`` held-out training images; (iii) the physically pruned copy fine-tuned ``--epochs`` epoch(s) (SGD lr
``--lr``, cosine, batch 128) on ``--train`` training images, then accuracy on ``--test`` test images. Prints
Spearman's rho of (i) and of (ii) with (iii), and the share of candidates whose adaptive-BN accuracy is at
least their vanilla accuracy; the uniform L1 allocation at the same target is fine-tuned the same way for
reference. One JSON line per candidate in ``--out`` (resumable: finished candidates are not run again).

Usage: nice python benchmarks/eagleeye_correlation.py [--candidates 30] [--target macs=0.25]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import prunekit as pk
from prunekit.allocate import parse_target
from prunekit.allocate.search import random_ratios, sample_feasible
from prunekit.api import Subnets
from prunekit.data import first_examples
from prunekit.train.search import max_ratio_for
from prunekit.train.baseline import load_baseline
from prunekit.train.subnet_eval import SubnetEvaluator, recalibrate_bn


def _fine_tuned(subnets, widths, train, test, recal, a) -> float:
    m = subnets.pruned_copy(widths)
    recalibrate_bn(m, recal)
    pk.fit(m, train, pk.TrainConfig(epochs=a.epochs, lr=a.lr, seed=a.seed, progress=False))
    return pk.evaluate(m, test)["accuracy"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--candidates", type=int, default=30)
    ap.add_argument("--target", default="macs=0.25")
    ap.add_argument("--window", type=float, default=0.01)
    ap.add_argument("--recal", type=int, default=20)
    ap.add_argument("--val", type=int, default=1000)
    ap.add_argument("--train", type=int, default=4500)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/eagleeye_correlation.jsonl")
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    data = pk.data.load("fashion-mnist", batch_size=128, subset=a.train + a.val, seed=a.seed,
                        val_fraction=a.val / (a.train + a.val))
    train = first_examples(data.train, a.train)
    val = first_examples(data.val, a.val)
    test = first_examples(data.test, a.test)
    recal = train[:a.recal]
    model = load_baseline("resnet20")
    subnets = Subnets(model, data.example_inputs(2))
    kind, limit = parse_target(a.target)
    r_max = max_ratio_for(limit)
    vanilla, adaptive = SubnetEvaluator([], val, adaptive_bn=False), SubnetEvaluator(recal, val)
    out = Path(a.out)
    done = {json.loads(l)["index"] for l in out.read_text().splitlines()} if out.exists() else set()
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in ["uniform"] + list(range(a.candidates)):
        if i in done:
            continue
        t0 = time.perf_counter()
        if i == "uniform":
            widths = subnets.uniform_at(a.target)
        else:
            widths, _ = sample_feasible(subnets.space, lambda w: subnets.cost(w, kind), limit, np.random.default_rng([a.seed, i]),
                                        lambda g: random_ratios(g, len(subnets.space), r_max), window=a.window,
                                        tries=100_000)
        with subnets.masked(widths) as v:
            van = vanilla(v)
        with subnets.masked(widths) as v:
            ada = adaptive(v)
        fin = _fine_tuned(subnets, widths, train, test, recal, a)
        row = {"index": i, "widths": list(widths), "cost": subnets.cost(widths, kind), "vanilla": van, "adaptive": ada,
               "finetuned": fin, "seconds": time.perf_counter() - t0}
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    summarise(out, a)


def summarise(out: Path, a) -> dict:
    from scipy.stats import spearmanr

    rows = [json.loads(l) for l in out.read_text().splitlines()]
    cands = [r for r in rows if r["index"] != "uniform"]
    fin = [r["finetuned"] for r in cands]
    res = {"candidates": len(cands), "target": a.target,
           "rho_adaptive": float(spearmanr([r["adaptive"] for r in cands], fin).statistic),
           "rho_vanilla": float(spearmanr([r["vanilla"] for r in cands], fin).statistic),
           "adaptive_ge_vanilla": float(np.mean([r["adaptive"] >= r["vanilla"] for r in cands])),
           "best_by_adaptive_finetuned": max(cands, key=lambda r: r["adaptive"])["finetuned"],
           "best_by_vanilla_finetuned": max(cands, key=lambda r: r["vanilla"])["finetuned"],
           "mean_finetuned": float(np.mean(fin)),
           "uniform_finetuned": next((r["finetuned"] for r in rows if r["index"] == "uniform"), None)}
    print(json.dumps(res))
    u = res["uniform_finetuned"]
    md = [f"# EagleEye's claim: adaptive-BN accuracy against accuracy after fine-tuning ({len(cands)} random "
          f"strategies, ResNet-20 / Fashion-MNIST, {a.target})", "",
          f"Command: `python benchmarks/eagleeye_correlation.py --candidates {a.candidates} --target {a.target}` "
          f"(resumable; one JSON line per candidate in `{out.name}`). Each candidate: a pruning ratio per prunable "
          f"group from U(0, R) (R = EagleEye's value for the target), L1 filters, only strategies within "
          f"{a.window} below the target; (i) vanilla accuracy (dense BN statistics) and (ii) adaptive-BN accuracy "
          f"({a.recal} training batches re-estimate BN) on {a.val} held-out training images; (iii) the pruned copy "
          f"fine-tuned {a.epochs} epoch(s) (SGD lr {a.lr}, cosine) on {a.train} training images, accuracy on "
          f"{a.test} test images.", "",
          "| figure | value |", "|---|---|",
          f"| Spearman rho, adaptive-BN vs fine-tuned | {res['rho_adaptive']:.3f} |",
          f"| Spearman rho, vanilla vs fine-tuned | {res['rho_vanilla']:.3f} |",
          f"| candidates with adaptive-BN >= vanilla accuracy | {100 * res['adaptive_ge_vanilla']:.0f}% |",
          f"| fine-tuned accuracy of the best by adaptive BN | {100 * res['best_by_adaptive_finetuned']:.2f}% |",
          f"| fine-tuned accuracy of the best by vanilla accuracy | {100 * res['best_by_vanilla_finetuned']:.2f}% |",
          f"| mean fine-tuned accuracy of the candidates | {100 * res['mean_finetuned']:.2f}% |",
          f"| uniform L1 allocation at the same target, same fine-tune | "
          f"{'n/a' if u is None else f'{100 * u:.2f}%'} |", "",
          "Entry's check: rho(adaptive) > rho(vanilla), rho(adaptive) > 0.3, adaptive >= vanilla for >= 80% of the "
          "candidates, and the best strategy by adaptive BN no worse than uniform after fine-tuning."]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    return res


if __name__ == "__main__":
    main()
