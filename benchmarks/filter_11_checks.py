"""The entry checks of scp, bar and lfpc (issue 20), scaled to one core of an overloaded machine.

Every row is one ``prunekit run`` from a shipped Fashion-MNIST baseline on 4,500 training images (``--subset
5000``, lr 0.01, batch 128), ``--epochs`` epochs of the method's own training, one cut, no fine-tune; the table
shows the test accuracy right after the cut and after BN recalibration, the MACs kept and the method's
telemetry. Rows (the entries' checks, scaled: fewer images and epochs than the entries ask):

* scp vs slimming: small VGG at macs=0.5 (the entry: -50% FLOPs, SCP >= slimming - 0.5 pt, same epochs);
* bar vs plain L0 (bar with ``barrier=false``: the same gates and sparsity loss, no barrier): small VGG at
  macs=0.25 with distillation (the entry: budget 25%, gated resource <= budget after it is reached);
* lfpc vs sfp (l2, fpgm): ResNet-20 at macs=0.36 (40% of the filters of every layer; the entry: LFPC >= the best
  single fixed criterion - 0.3 pt).

Runs go to ``benchmarks/results/filter_11/<row>_s<seed>`` (finished runs are kept, so the script resumes); the
table to ``benchmarks/results/filter_11_checks.md``.

Usage: nice python benchmarks/filter_11_checks.py [--seeds 0] [--rows scp slimming ...] [--epochs 2] [--bn-probe]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "filter_11"

VGG = ("vgg-small", "vgg-small-fashion-mnist")
RESNET = ("resnet20", "resnet20-fashion-mnist")
ROWS = {  # row: (model, baseline, method, target, options)
    "scp": (*VGG, "scp", "macs=0.5", {}),
    "slimming": (*VGG, "slimming", "macs=0.5", {"strength": 0.5}),  # the bench's engaged value (filter_engaged.yaml)
    "bar": (*VGG, "bar", "macs=0.25", {}),
    "l0": (*VGG, "bar", "macs=0.25", {"barrier": False}),
    "lfpc": (*RESNET, "lfpc", "macs=0.36", {}),
    "sfp-l2": (*RESNET, "sfp", "macs=0.36", {"criterion": "l2"}),
    "sfp-fpgm": (*RESNET, "sfp", "macs=0.36", {"criterion": "fpgm"}),
}


def _value(v) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


def run_row(row: str, seed: int, epochs: int) -> Path:
    model, baseline, method, target, options = ROWS[row]
    out = OUT / f"{row}_e{epochs}_s{seed}"
    if (out / "report.json").exists():
        return out
    cmd = [sys.executable, "-m", "prunekit", "run", "--model", model, "--data", "fashion-mnist", "--baseline", baseline,
           "--method", method, "--target", target, "--prune-epochs", str(epochs), "--finetune-epochs", "0",
           "--subset", "5000", "--lr", "0.01", "--seed", str(seed), "--no-latency", "--out", str(out)]
    for k, v in options.items():
        cmd += ["--option", f"{k}={_value(v)}"]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return out


def _telemetry(t: dict) -> str:
    short = {}
    for k, v in t.items():
        if isinstance(v, list):
            short[k] = "[" + ", ".join(f"{x:.3g}" if isinstance(x, float) else str(x) for x in v) + "]"
        elif isinstance(v, dict):
            short[k] = "{" + ", ".join(f"{kk}: {vv:.2f}" if isinstance(vv, float) else f"{kk}: {vv}"
                                       for kk, vv in v.items()) + "}"
        else:
            short[k] = f"{v:.3g}" if isinstance(v, float) else str(v)
    return "; ".join(f"{k}={v}" for k, v in short.items())


def bn_probe() -> list[str]:
    """SCP's on-probability 1 - Phi(-beta/|gamma|) of the shipped small VGG's BN channels (5/50/95% quantiles)."""
    import torch

    from prunekit.methods._soft_masks import bn_relu_off_probability
    from prunekit.train.baseline import load_baseline

    model = load_baseline(VGG[1])
    lines = ["| BN | channels | on-probability 5% / 50% / 95% |", "|---|---|---|"]
    for name, bn in model.named_modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            p = 1 - bn_relu_off_probability(bn.weight.detach(), bn.bias.detach())
            q = p.quantile(torch.tensor([0.05, 0.5, 0.95])).tolist()
            lines.append(f"| {name} | {bn.num_features} | {q[0]:.2f} / {q[1]:.2f} / {q[2]:.2f} |")
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--rows", nargs="+", default=list(ROWS))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--bn-probe", action="store_true", help="print SCP's on-probabilities of the baseline and exit")
    a = ap.parse_args()
    if a.bn_probe:
        print("\n".join(bn_probe()))
        return
    if not a.table_only:
        for seed in a.seeds:
            for row in a.rows:
                run_row(row, seed, a.epochs)
    md = ["# The entry checks of scp, bar and lfpc, scaled (Fashion-MNIST, one core)", "",
          f"Command: `python benchmarks/filter_11_checks.py --seeds {' '.join(map(str, a.seeds))} --epochs {a.epochs}` "
          f"(each row a `prunekit run` from the shipped baseline: {a.epochs} epochs of the method's training on 4,500 "
          "images, lr 0.01, one cut, no fine-tune).", "",
          "| row | model | target | seeds | dense | after the cut | after BN recalibration | MACs kept | engaged | "
          "telemetry (seed 0) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in ROWS:
        outs = [OUT / f"{row}_e{a.epochs}_s{s}" / "report.json" for s in a.seeds]
        reps = [json.loads(p.read_text()) for p in outs if p.exists()]
        if not reps:
            continue
        st = [r["stages"] for r in reps]
        cut = [s["after prune"] for s in st]
        recal = [s.get("after BN recalibration", float("nan")) for s in st]
        kept = [r["ratios"]["macs_kept"] for r in reps]
        md.append(f"| {row} | {ROWS[row][0]} | {ROWS[row][3]} | {len(reps)} | {100 * st[0]['baseline']:.2f}% | "
                  f"{100 * np.mean(cut):.2f} ± {100 * np.std(cut):.2f}% | {100 * np.mean(recal):.2f} ± "
                  f"{100 * np.std(recal):.2f}% | {np.mean(kept):.3f} | "
                  f"{sum(bool(r['method']['engaged']) for r in reps)}/{len(reps)} | "
                  f"{_telemetry(reps[0]['method']['telemetry'])} |")
    (OUT.parent / "filter_11_checks.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
