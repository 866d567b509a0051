"""``python -m prunekit.models [--in-channels C] [--input-size S] [--num-classes K]``: a Markdown table of
every built-in model's parameters, MACs (batch 1) and dense size, built with random weights."""
from __future__ import annotations

import argparse
import sys

import torch
from prunekit import models
from prunekit.measure import measure


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m prunekit.models", description=__doc__)
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--input-size", type=int, default=28)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("names", nargs="*", help="models to list (default: every built-in model)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    out = ["| model | params | MACs | dense size (bytes) |", "|---|---:|---:|---:|"]
    for name in args.names or models.MODELS.names():
        m = models.create(name, num_classes=args.num_classes, in_channels=args.in_channels,
                          input_size=args.input_size).eval()
        r = measure(m, models.example_inputs(m, 1))
        macs = "n/a" if r.macs is None else f"{r.macs:,}"
        out.append(f"| {name} | {r.params:,} | {macs} | {r.size_dense:,} |")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
