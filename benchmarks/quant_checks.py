"""The scaled small-scale checks of clip-q and djpq (docs/methods-quant-1.md), every number written as JSON.

Scaled to the shared 2-core machine: Fashion-MNIST train subset of 12,000 images (clip-q) / 6,000 (djpq), the
first 2,000 test images, one thread, seed 0, from the shipped baselines (lenet5-fashion-mnist for clip-q,
vgg-small-fashion-mnist for djpq, which has BatchNorm). Each check writes
benchmarks/results/quant_checks_<name>.json when it finishes, so a rerun skips finished checks (resumable).

* clip-q: the entry's check. CLIP-Q at fixed (p, b) = (0.9, 5) for 3 epochs at lr 0.01 against the sequential
  pipeline with the same epochs (magnitude prune to 90% per layer -> 3 epochs retrain with masks -> 5-bit
  k-means weight sharing, prunekit.quantize.share_weights_), plus CLIP-Q with its Bayesian search (budget 30)
  and Deep Compression (3 prune/retrain rounds of 1 epoch + 1 centroid epoch = 4 epochs, 8-bit conv / 5-bit fc)
  at the same 90% sparsity: accuracy and the packed file's bytes (prunekit.quantize.packed_size).
* xor-encryption: the entry's check on the lenet300-fashion-mnist baseline (no training): bits per weight,
  patches, ratio, and the accuracy of the decoded (pruned, 1-bit) model on the 2,000 test images.
* djpq: DJPQ at its defaults for 3 epochs at lr 0.01, target macs=0.5: accuracy, BOPs reduction, bits;
  djpq-gamma20: the same with a 200x stronger BOPs term (gamma = 20).

Usage: nice -n 15 python benchmarks/quant_checks.py [--only clip-q djpq xor-encryption djpq-gamma20]
"""
from __future__ import annotations

import argparse
import copy
import json
import pathlib
import time

import torch

import prunekit as pk
from prunekit.methods import RunContext, get_method, load_all
from prunekit.quantize import bits_used, packed_size, share_weights_
from prunekit.train.baseline import load_baseline

OUT = pathlib.Path(__file__).parent / "results"
FT = dict(lr=0.01, seed=0, progress=False)


def _acc(m, test) -> float:
    return pk.evaluate(m, test)["accuracy"]


def _layers(m) -> dict:
    return {f: {"zeros": round(v["zeros"], 4), "distinct": v["distinct"], "bits": v["bits"]}
            for f, v in bits_used(m).items()}


def check_clip_q() -> dict:
    b = pk.data.load("fashion-mnist", batch_size=128, subset=(12000, 2000), val_fraction=0.0, augment=False)
    base = load_baseline("lenet5-fashion-mnist")
    x = torch.zeros(1, 1, 28, 28)
    out = {"dense": {"accuracy": _acc(base, b.test), "packed_bytes": packed_size(base)}}
    for name, options in (("clip-q fixed (0.9, 5)", {"search": "fixed", "bits": 5}), ("clip-q bayesopt", {})):
        m = copy.deepcopy(base)
        t = time.time()
        res = get_method("clip-q").run(RunContext(model=m, example_inputs=x, target="sparsity=0.9", train_data=b.train,
                                                  calib=b.calib(2), prune_epochs=3, options=options,
                                                  train_config=pk.TrainConfig(epochs=3, **FT)))
        out[name] = {"accuracy": _acc(m, b.test), "packed_bytes": res.info["packed_bytes"],
                     "telemetry": res.telemetry, "layers": _layers(m), "pq": res.info["layers"],
                     "search": res.info["search"], "seconds": round(time.time() - t, 1)}
    m = copy.deepcopy(base)  # sequential: prune -> retrain -> k-means quantise, same 3 epochs
    pk.sparsify_(m, sparsity=0.9)
    pk.fit(m, b.train, pk.TrainConfig(epochs=3, **FT))
    share_weights_(m, bits_conv=5, bits_fc=5)
    out["sequential prune-retrain-kmeans 5 bit"] = {"accuracy": _acc(m, b.test), "packed_bytes": packed_size(m),
                                                    "layers": _layers(m)}
    m = copy.deepcopy(base)
    res = get_method("deep-compression").run(RunContext(model=m, example_inputs=x, target="sparsity=0.9",
                                                        train_data=b.train,
                                                        train_config=pk.TrainConfig(epochs=1, **FT)))
    out["deep-compression"] = {"accuracy": _acc(m, b.test), "packed_bytes": packed_size(m),
                               "huffman_bytes": res.info["compressed_bytes"], "layers": _layers(m),
                               "sparsity": res.info["sparsity"]}
    return out


def check_djpq(options: dict | None = None) -> dict:
    b = pk.data.load("fashion-mnist", batch_size=128, subset=(6000, 2000), val_fraction=0.0, augment=False)
    base = load_baseline("vgg-small-fashion-mnist")
    out = {"dense": {"accuracy": _acc(base, b.test)}}
    m = copy.deepcopy(base)
    t = time.time()
    res = get_method("djpq").run(RunContext(model=m, example_inputs=torch.zeros(2, 1, 28, 28), target="macs=0.5",
                                            train_data=b.train, prune_epochs=3, options=options or {},
                                            train_config=pk.TrainConfig(epochs=3, **FT)))
    out["djpq"] = {"accuracy": _acc(m, b.test), "options": options or {}, "telemetry": res.telemetry,
                   **{k: res.info[k] for k in ("bits_w", "bits_a", "bops", "dense_bops", "bops_reduction",
                                               "bops_pruned_fp32", "channels_below_threshold", "kept_macs_fraction")},
                   "seconds": round(time.time() - t, 1)}
    return out


def check_xor() -> dict:
    """The entry's check: LeNet-300-100 baseline, 90% magnitude pruning, 1 bit, n_out = 20, n_in = 2..4."""
    base = load_baseline("lenet300-fashion-mnist")
    b = pk.data.load("fashion-mnist", batch_size=500, subset=(2000, 2000), val_fraction=0.0, augment=False)
    out = {}
    for n_in in (2, 3, 4):
        m = copy.deepcopy(base)
        res = get_method("xor-encryption").run(RunContext(model=m, example_inputs=None, target="sparsity=0.9",
                                                          options={"n_in": n_in}))
        out[f"n_in={n_in}"] = {"accuracy": _acc(m, b.test),
                               **{k: res.info[k] for k in ("bits_per_weight", "patches", "slices", "ratio_vs_float32",
                                                           "scale_bits_per_weight", "sparsity")}}
    out["dense"] = {"accuracy": _acc(base, b.test)}
    return out


CHECKS = {"clip-q": check_clip_q, "djpq": check_djpq, "xor-encryption": check_xor,
          "djpq-gamma20": lambda: check_djpq({"gamma": 20.0})}

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=list(CHECKS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    load_all()
    for name in args.only:
        path = OUT / f"quant_checks_{name}.json"
        if path.exists():
            print(f"{name}: done already ({path.name})")
            continue
        result = CHECKS[name]()
        path.write_text(json.dumps(result, indent=1, default=str))
        print(name, json.dumps(result, default=str)[:2000])
