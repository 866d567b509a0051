"""Hinge's cut model under the fair protocol's fine-tune learning rate and a ten times smaller one.

The fair protocol (benchmarks/recipes/filter_2a_hinge_curl.yaml) fine-tunes every row at lr 0.01; hinge's rows
there end *below* their accuracy right after the cut. This script isolates the fine-tune: hinge (reg 3,
2 proximal epochs on 4,500 training images, lr 0.01, the grid's setting) cuts the shipped ResNet-20 once,
BatchNorm is re-estimated on 8 batches, then copies of that one model are fine-tuned 2 epochs at each
``--lrs`` value (SGD, momentum 0.9, cosine, the protocol's fine-tune otherwise). It also reports the norms of
the conv weights the proximal steps left (every column of A shrinks by lr * reg per step; the kept ones sit
before a BatchNorm, where a small weight means a large effective step).

Usage: nice python benchmarks/hinge_finetune_lr.py [--target macs=0.25] [--seed 0] [--lrs 0.01 0.001]
Writes benchmarks/results/hinge_finetune_lr.md.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch

import prunekit as pk
from prunekit import data
from prunekit.train import baseline as baselines
from prunekit.methods import RunContext, get_method, load_all
from prunekit.train import fit
from prunekit.train.loop import evaluate
from prunekit.train.subnet_eval import recalibrate_bn

ROOT = Path(__file__).resolve().parent.parent


def conv_norms(model) -> list[float]:
    return sorted(float(m.weight.detach().norm()) for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="macs=0.25")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reg", type=float, default=3.0)
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.001])
    a = ap.parse_args()
    torch.set_num_threads(1)
    load_all()
    t0 = time.time()
    bundle = data.load("fashion-mnist", batch_size=128, subset=5000, seed=a.seed)
    model = baselines.load_baseline("resnet20-fashion-mnist")
    dense_norms = conv_norms(model)
    torch.manual_seed(a.seed)
    res = get_method("hinge").run(RunContext(
        model=model, example_inputs=next(iter(bundle.test))[0][:1], target=a.target, train_data=bundle.train,
        train_config=pk.TrainConfig(lr=0.01, progress=False, seed=a.seed), prune_epochs=2, seed=a.seed,
        options={"reg": a.reg}))
    recalibrate_bn(model, data.first_batches(bundle.train, 8))
    cut = evaluate(model, bundle.test)["accuracy"]
    rows = []
    for lr in a.lrs:
        m = copy.deepcopy(model)
        torch.manual_seed(a.seed)
        fit(m, bundle.train, pk.TrainConfig(epochs=2, lr=lr, progress=False, seed=a.seed))
        rows.append((lr, evaluate(m, bundle.test)["accuracy"]))
    norms = conv_norms(model)
    md = [f"# hinge (reg {a.reg:g}) at {a.target}: the fine-tune's learning rate", "",
          f"Command: `python benchmarks/hinge_finetune_lr.py --target {a.target} --seed {a.seed} --lrs "
          f"{' '.join(f'{x:g}' for x in a.lrs)}` ({time.time() - t0:.0f} s on one thread). One hinge run (2 proximal "
          f"epochs on 4,500 images at lr 0.01, the fair grid's setting), BN re-estimated on 8 batches, then copies "
          f"of that model fine-tuned 2 epochs at each learning rate.", "",
          f"Telemetry: {res.telemetry}", "",
          "| stage | test accuracy |", "|---|---:|", f"| after the cut, BN recal. | {100 * cut:.2f}% |"]
    md += [f"| after a 2-epoch fine-tune at lr {lr:g} | {100 * acc:.2f}% |" for lr, acc in rows]
    md += ["", f"Conv weight norms (smallest five): dense {', '.join(f'{x:.3f}' for x in dense_norms[:5])}; after the "
               f"proximal steps and the cut {', '.join(f'{x:.3f}' for x in norms[:5])}; median dense "
               f"{np.median(dense_norms):.3f}, after {np.median(norms):.3f}.", ""]
    out = ROOT / "benchmarks" / "results" / "hinge_finetune_lr.md"
    out.write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
