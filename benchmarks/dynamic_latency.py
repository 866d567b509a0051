"""When does skipping channels per input pay on a CPU? Latency of one gated conv stack against its dense and
zero-multiplied forms, by width (issue 20's "dynamic pruning is claimed in MACs and never timed").

A chain of ``--layers`` 3x3 conv-BN-ReLU layers of ``C`` channels on ``S x S`` inputs, every conv but the first
gated by FBS's saliency selector (untrained, random predictors) at density ``--density``; the dense chain, the
gated chain on its masked path (every channel computed, the skipped ones multiplied by zero) and on its gather
path (only the kept channels computed, reading only the non-zero inputs) are timed in turn, one thread, median of
``--rounds`` alternating rounds of ``prunekit.measure.latency`` (20 runs each), at batch 1 and batch 32. Results
go to ``benchmarks/results/dynamic_check/latency.json`` and are printed as a markdown table.

Usage: nice python benchmarks/dynamic_latency.py [--widths 32 128 256] [--size 14] [--density 0.5]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prunekit.measure import latency  # noqa: E402
from prunekit.surgery import dynamic as D  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "dynamic_check"


def chain(c: int, layers: int) -> nn.Sequential:
    mods = []
    for i in range(layers):
        mods += [nn.Conv2d(3 if i == 0 else c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
    return nn.Sequential(*mods).eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", type=int, nargs="+", default=[32, 128, 256])
    ap.add_argument("--size", type=int, default=14)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--density", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = []
    for c in a.widths:
        dense = chain(c, a.layers)
        gather = copy.deepcopy(dense)
        pairs = [(str(3 * i), str(3 * i + 1)) for i in range(1, a.layers)]
        D.gate_convs_(gather, pairs, D.FBS, lambda f, conv: [max(1, round(a.density * conv.out_channels))])
        gather.eval()
        masked = copy.deepcopy(gather)
        D.set_execution(gather, "gather")
        D.set_execution(masked, "masked")
        for batch in (1, 32):
            x = torch.randn(batch, 3, a.size, a.size)
            with torch.no_grad():
                torch.testing.assert_close(gather(x), masked(x), rtol=1e-4, atol=1e-5)
            macs = float(D.executed_macs(gather, x).mean())
            dense_macs = sum(u.dense_macs(torch.empty(1, u.conv.in_channels, a.size, a.size))
                             for u in D.gated_units(gather).values())
            times = {"dense": [], "masked": [], "gather": []}
            for _ in range(a.rounds):
                for k, m in (("dense", dense), ("masked", masked), ("gather", gather)):
                    times[k].append(latency(m, x, warmup=3, runs=20).median_ms)
            row = {"width": c, "batch": batch, "gated_macs_fraction": macs / dense_macs,
                   **{f"{k}_ms": statistics.median(v) for k, v in times.items()}}
            rows.append(row)
            print(row, flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "latency.json").write_text(json.dumps({"args": vars(a), "rows": rows}, indent=1))
    print("| width | batch | executed MACs of the gated convs | dense ms | masked ms | gather ms | gather / dense |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['width']} | {r['batch']} | {r['gated_macs_fraction']:.3f} | {r['dense_ms']:.2f} | "
              f"{r['masked_ms']:.2f} | {r['gather_ms']:.2f} | {r['gather_ms'] / r['dense_ms']:.2f} |")


if __name__ == "__main__":
    main()
