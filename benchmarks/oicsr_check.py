"""The oicsr entry check on the shipped small VGG / Fashion-MNIST (issue 20).

Protocol (the entry's small-scale check): from the baseline, 3 epochs of training with the out-in group lasso
(OICSR) or with the filter-only group lasso (``separate=True``, the paper's baseline) at the same lambda
(``--strength``), then one global cut to ``--target`` without fine-tuning; test accuracy right after the cut and
after BN recalibration, over ``--seeds``. Each run is ``prunekit run`` (4,500 training images, lr 0.01) into
``benchmarks/results/oicsr_check/<row>_l<strength>_s<seed>`` (existing runs are kept); the table goes to
``benchmarks/results/oicsr_check_l<strength>.md``.

Usage: nice python benchmarks/oicsr_check.py [--seeds 0 1 2] [--strength 1e-3]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "oicsr_check"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--strength", type=float, default=1e-3)
    ap.add_argument("--target", default="macs=0.5")
    ap.add_argument("--epochs", type=int, default=3)
    a = ap.parse_args()
    rows = {"oicsr": "false", "filter-lasso": "true"}
    for seed in a.seeds:
        for row, sep in rows.items():
            out = OUT / f"{row}_l{a.strength:g}_s{seed}"
            if (out / "report.json").exists():
                continue
            cmd = [sys.executable, "-m", "prunekit", "run", "--model", "vgg-small", "--data", "fashion-mnist",
                   "--baseline", "vgg-small-fashion-mnist", "--method", "oicsr", "--option", f"separate={sep}",
                   "--option", f"strength={a.strength}", "--target", a.target, "--prune-epochs", str(a.epochs),
                   "--finetune-epochs", "0", "--subset", "5000", "--lr", "0.01", "--seed", str(seed),
                   "--no-latency", "--out", str(out)]
            subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    md = ["# OICSR's entry check: out-in group lasso against the filter-only group lasso (small VGG / Fashion-MNIST)",
          "", f"Command: `python benchmarks/oicsr_check.py --seeds {' '.join(map(str, a.seeds))} --strength "
          f"{a.strength}` (each run a `prunekit run`: {a.epochs} epochs with the lasso at lambda = {a.strength} on "
          f"4,500 training images, lr 0.01, then one global cut to {a.target}, no fine-tune).", "",
          "| row | seeds | after the cut | after BN recalibration | lower-half energy share before → after | engaged |",
          "|---|---|---|---|---|---|"]
    for row in rows:
        reps = [json.loads((OUT / f"{row}_l{a.strength:g}_s{s}" / "report.json").read_text()) for s in a.seeds
                if (OUT / f"{row}_l{a.strength:g}_s{s}" / "report.json").exists()]
        if not reps:
            continue
        cut = [r["stages"]["after prune"] for r in reps]
        recal = [r["stages"].get("after BN recalibration", float("nan")) for r in reps]
        tel = [r["method"]["telemetry"] for r in reps]
        md.append(f"| {row} | {len(reps)} | {100 * np.mean(cut):.2f} ± {100 * np.std(cut):.2f}% | "
                  f"{100 * np.mean(recal):.2f} ± {100 * np.std(recal):.2f}% | "
                  f"{np.mean([t['bottom_half_share_before'] for t in tel]):.3f} → "
                  f"{np.mean([t['bottom_half_share'] for t in tel]):.3f} | "
                  f"{sum(bool(r['method']['engaged']) for r in reps)}/{len(reps)} |")
    md += ["", "Entry's check: OICSR's accuracy after the cut at least the filter-only lasso's."]
    (OUT.parent / f"oicsr_check_l{a.strength:g}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
