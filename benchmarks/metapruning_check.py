"""MetaPruning's entry check, scaled to one CPU core (issue 18).

The entry: a 4-conv VGG on Fashion-MNIST, width ratios {0.25, 0.5, 0.75, 1.0}, PruningNet trained 3 epochs,
evolution with population 16 x 5 generations, FLOPs window [0.45, 0.55]. Asserts (a) every evaluated candidate
respects the window; (b) the best searched encoding's PruningNet accuracy >= the uniform-0.7x encoding's; (c) over
6 random encodings, Spearman(PruningNet-predicted accuracy, accuracy after 1 epoch of from-scratch training) >= 0.3.

Scaled: ``--train`` training images (default 2,000 of 60,000; 1,000 more held out from the training split score the
candidates), test on 2,000 test images, ``--epochs 3`` PruningNet epochs, ``--recal 3`` recalibration batches of 128 per candidate, scored on ``--val 500``
held-out training images.
The window is [0.45, 0.55] (target macs=0.55, window 0.1). Uniform 0.7x: every group at round-to-grid(0.7 width)
(the grid is {0.25, 0.5, 0.75, 1.0}, so 0.7 snaps to 0.75: 0.5625 of the MACs, just outside the window; it is
scored anyway, as the entry asks). The 6 random encodings for (c) are drawn inside the window.

Usage: nice python benchmarks/metapruning_check.py [--seeds 0] [--train 2000] [--epochs 3] [--recal 3] [--val 500]
Results: benchmarks/results/metapruning_check.json (a row per seed; an existing row is not rerun) and .md.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

import prunekit as pk
from prunekit.data.loader import TensorLoader
from prunekit.methods.metapruning import MetaPruningConfig, encoding_scorer, evolve, train_pruningnet
from prunekit.train import TrainConfig, evaluate, fit

OUT = Path(__file__).resolve().parent / "results"
GRID = dict(ratio_min=0.25, ratio_step=0.25)


def vgg4(seed: int) -> nn.Module:
    """The entry's 4-conv VGG: 2 x (conv-BN-ReLU) 32, pool, 2 x (conv-BN-ReLU) 64, pool, global pool, linear."""
    torch.manual_seed(seed)

    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

    return nn.Sequential(*block(1, 32), *block(32, 32), nn.MaxPool2d(2), *block(32, 64), *block(64, 64),
                         nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def data(n_train: int, seed: int):
    b = pk.data.load("fashion-mnist", subset=(n_train + 1000, 2000), batch_size=128, val_fraction=0.0, seed=seed,
                     augment=False)
    tr = b.train
    x, y = tr.inputs, tr.targets
    mk = lambda xs, ys, sh: TensorLoader(xs, ys, batch_size=128, shuffle=sh, seed=seed, normalize=tr.normalize)  # noqa: E731
    return mk(x[:n_train], y[:n_train], True), mk(x[n_train:], y[n_train:], False), b.test


def one(seed: int, n_train: int, epochs: int, recal: int, val: int) -> dict:
    train, held, test = data(n_train, seed)
    cfg = MetaPruningConfig(**GRID, population=16, generations=5, parents=4, mutations=6, crossovers=6,
                            window=0.1, recal_batches=recal, val_images=val)
    model = vgg4(seed)
    x = next(iter(train))[0][:2]
    t0 = time.time()
    tc = TrainConfig(epochs=epochs, lr=0.05, seed=seed, progress=False)
    pnet, sampler, enc = train_pruningnet(model, x, train, tc, cfg, seed=seed)
    score = encoding_scorer(pnet, train, held, cfg)
    record, evo = evolve(pnet, sampler, score, "macs", 0.55, cfg, seed=seed)
    t_search = time.time() - t0
    costs = [t.cost for t in record.trials]
    best = record.best(1)[0]
    uniform = sampler.snap([0.7 * w for w in pnet.slim.space.widths])
    uniform_score = score(uniform)
    rng = np.random.default_rng(1000 + seed)
    rand = []
    while len(rand) < 6:
        w = sampler.uniform(rng)
        if 0.45 <= pnet.slim.cost(w) <= 0.55 and w not in rand:
            rand.append(w)
    predicted, trained = [], []
    for i, w in enumerate(rand):
        predicted.append(score(w))
        net = pnet.slim.pruned_copy(w)
        for m in net.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        fit(net, train, TrainConfig(epochs=1, lr=0.05, seed=seed + i, progress=False))
        trained.append(evaluate(net, test)["accuracy"])
    rho = float(spearmanr(predicted, trained).statistic)
    return {"seed": seed, "train_images": n_train, "epochs": epochs, "recal_batches": recal, "val_images": val, "evaluated": len(record.trials),
            "generations": evo.generation + 1, "pruningnet_steps": enc.steps,
            "costs_min_max": [min(costs), max(costs)], "all_in_window": all(0.45 - 1e-9 <= c <= 0.55 + 1e-9 for c in costs),
            "best_score": best.score, "best_cost": best.cost, "best_widths": list(best.widths),
            "first_generation_best": max(t.score for t in record.trials[:16]),
            "uniform_widths": list(uniform), "uniform_cost": pnet.slim.cost(uniform), "uniform_score": uniform_score,
            "random_widths": [list(w) for w in rand], "predicted": predicted, "trained_1_epoch": trained,
            "spearman": rho, "search_seconds": t_search, "seconds": time.time() - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--recal", type=int, default=3)
    ap.add_argument("--val", type=int, default=500)
    a = ap.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(exist_ok=True)
    path = OUT / "metapruning_check.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    for seed in a.seeds:
        if any(r["seed"] == seed and r["train_images"] == a.train and r["epochs"] == a.epochs for r in rows):
            continue
        rows.append(one(seed, a.train, a.epochs, a.recal, a.val))
        path.write_text(json.dumps(rows, indent=1))
    lines = ["| seed | evaluated | all in [0.45, 0.55] | best (PruningNet acc, MACs) | uniform 0.7x (acc, MACs) | "
             "best of generation 1 | Spearman predicted vs 1-epoch scratch (6 encodings) | s |", "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['evaluated']} | {r['all_in_window']} | {100 * r['best_score']:.2f}, "
                     f"{r['best_cost']:.3f} | {100 * r['uniform_score']:.2f}, {r['uniform_cost']:.3f} | "
                     f"{100 * r['first_generation_best']:.2f} | {r['spearman']:.3f} | {r['seconds']:.0f} |")
    (OUT / "metapruning_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
