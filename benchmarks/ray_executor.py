"""One benchmark grid through both executors (issue 17 item 3): local worker processes and Ray tasks on a local
instance with as many CPUs, the same cells, compared figure by figure, and the wall time of each.

The grid: the shipped ResNet-20 Fashion-MNIST baseline, ``--methods`` at ``--target``, ``--seeds``, a short
fine-tune on ``--subset`` training images (every cell seeds itself, so its numbers must not depend on where it
ran). Each executor writes into its own folder under ``--out`` (removed first, so both run every cell); the
results: ``<out>.json`` and a Markdown table beside it.

Usage: nice python benchmarks/ray_executor.py [--workers 2 --seeds 0 1]
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from prunekit.bench import BenchGrid, run_grid

COMMAND = "nice python benchmarks/ray_executor.py"
FIGURES = ("acc_pruned", "acc_recal", "acc_finetuned", "macs", "params")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", nargs="+", default=["criterion:l1", "criterion:l2", "criterion:random"])
    ap.add_argument("--target", default="macs=0.5")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--subset", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/ray_executor")
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    work = out.with_name(out.name + ".work")

    def grid(name: str) -> BenchGrid:
        return BenchGrid(name=f"executor-{name}", model="resnet20", data="fashion-mnist",
                         baseline="resnet20-fashion-mnist", methods=tuple(a.methods), targets=(a.target,),
                         seeds=tuple(a.seeds), finetune_epochs=1, lr=0.01, batch_size=128, subset=a.subset,
                         calib_batches=5, latency=False, out=str(work / name / "grid"))

    shutil.rmtree(work, ignore_errors=True)
    runs = {}
    for name, kw in (("local", {"workers": a.workers}), ("ray", {"executor": "ray", "workers": a.workers})):
        t0 = time.perf_counter()
        rep = run_grid(grid(name), progress=False, **kw)
        runs[name] = {"seconds": time.perf_counter() - t0, "done": rep["done"], "failed": rep["failed"]}
        print(name, runs[name], flush=True)
    cells, same = [], True
    for path in sorted((work / "local" / "grid.cells").glob("macs*.json")):
        a_cell = json.loads(path.read_text())
        b_cell = json.loads((work / "ray" / "grid.cells" / path.name).read_text())
        equal = {k: a_cell[k] == b_cell[k] for k in FIGURES}
        same &= all(equal.values())
        cells.append({"cell": path.stem, **{k: [a_cell[k], b_cell[k]] for k in FIGURES}, "equal": all(equal.values())})
    res = {"command": COMMAND, "workers": a.workers, "methods": a.methods, "target": a.target, "seeds": a.seeds,
           "subset": a.subset, "runs": runs, "cells": cells, "identical": same}
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    md = [f"# One grid through both executors ({a.workers} CPUs each)", "",
          f"Command: `{COMMAND} --workers {a.workers} --seeds {' '.join(map(str, a.seeds))}`. ResNet-20 baseline on "
          f"Fashion-MNIST, {a.target}, fine-tune 1 epoch on {a.subset} images; local = `--workers {a.workers}` "
          f"processes, ray = Ray tasks on a local instance of {a.workers} CPUs (its start included).", "",
          "| executor | cells | wall time (s) |", "|---|---|---|"]
    md += [f"| {k} | {v['done']} | {v['seconds']:.1f} |" for k, v in runs.items()]
    md += ["", "| cell | accuracy after fine-tune (local / ray) | MACs equal | every figure equal |", "|---|---|---|---|"]
    md += [f"| {c['cell']} | {c['acc_finetuned'][0]:.4f} / {c['acc_finetuned'][1]:.4f} | "
           f"{c['macs'][0] == c['macs'][1]} | {c['equal']} |" for c in cells]
    md += ["", f"Every figure ({', '.join(FIGURES)}) of every cell identical: {same}."]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
