"""Accuracy right after the cut (and after BN recalibration) of pfp's variants and fskd against the bare L1 cut.

Shipped ResNet-20 / Fashion-MNIST baseline, one target, seed 0, no fine-tuning; 2,000 test images. The same
calibration batches as the fair benchmark's first two (256 images). Command (from the repository root):

    python benchmarks/pfp_fskd_cut_checks.py --target macs=0.5
    python benchmarks/pfp_fskd_cut_checks.py --target macs=0.5 --rows 2   # pfp alone, with its widths
"""
import argparse
import json

import torch

import prunekit as pk
from prunekit.methods import RunContext, get_method, load_all
from prunekit.train.baseline import load_baseline
from prunekit.workflows import recalibrate_bn

ROWS = [("l1-filter", {}), ("fskd", {}), ("pfp", {}), ("pfp", {"reweight": False}),
        ("pfp", {"variant": "deterministic"}), ("pfp", {"variant": "hybrid"})]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="macs=0.5")
    ap.add_argument("--baseline", default="resnet20-fashion-mnist")
    ap.add_argument("--rows", type=int, nargs="*", help="indices of ROWS to run (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    load_all()
    b = pk.data.load("fashion-mnist", batch_size=128, subset=(5000, 2000), seed=0)
    calib = b.calib(2)
    out = []
    for i, (mid, opts) in enumerate(ROWS):
        if args.rows and i not in args.rows:
            continue
        m = load_baseline(args.baseline)
        res = get_method(mid).run(RunContext(model=m, example_inputs=b.example_inputs(2), target=args.target,
                                             calib=calib, options=opts))
        cut = pk.evaluate(m, b.test)["accuracy"]
        recalibrate_bn(m, calib)
        row = {"method": mid, "options": opts, "after_cut": cut, "after_bn_recal": pk.evaluate(m, b.test)["accuracy"],
               "telemetry": res.telemetry, "widths": res.info.get("widths"), "dense_widths": res.info.get("dense_widths")}
        print(json.dumps(row))
        out.append(row)


if __name__ == "__main__":
    main()
