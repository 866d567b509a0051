"""The scaled small-scale checks of net-trim and coreset-neuron, with every number printed.

Each check repeats the protocol of the matching slow test in tests/methods/test_<module>.py (LeNet-300-100
trained 3 epochs on a fixed 6,000-image Fashion-MNIST subset, 2,000 test images, one thread) and prints what
the test's thresholds were calibrated on, as JSON.

Usage: nice python benchmarks/weight4_checks.py [--only net-trim coreset-neuron]
"""
from __future__ import annotations

import argparse
import json

import torch

import prunekit as pk
from prunekit.methods import RunContext, get_method, load_all


def _dense():
    b = pk.data.load("fashion-mnist", batch_size=128, subset=(6000, 2000), val_fraction=0.0, augment=False)
    torch.manual_seed(0)
    dense = pk.models.create("lenet300")
    pk.fit(dense, b.train, pk.TrainConfig(epochs=3, lr=0.05, seed=0, progress=False))
    return b, dense


def check_net_trim():
    b, dense = _dense()
    out = {"dense": pk.evaluate(dense, b.test)["accuracy"]}
    for form in ("cascade", "parallel"):
        m = pk.models.create("lenet300")
        m.load_state_dict(dense.state_dict())
        res = get_method("net-trim").run(RunContext(model=m, example_inputs=None, target="sparsity=0.3",
                                                    calib=b.calib(40), options={"form": form}))
        out[form] = {"accuracy": pk.evaluate(m, b.test)["accuracy"], "telemetry": res.telemetry,
                     "off_violation": {f: s["off_violation"] for f, s in res.info["layers"].items()},
                     "relu_form": {f: s["relu"] for f, s in res.info["layers"].items()}}
    return out


def check_coreset():
    b, dense = _dense()
    out = {"dense": pk.evaluate(dense, b.test)["accuracy"]}
    for sampling in ("sensitivity", "uniform"):
        runs = []
        for seed in range(3):
            m = pk.models.create("lenet300")
            m.load_state_dict(dense.state_dict())
            get_method("coreset-neuron").run(RunContext(model=m, example_inputs=torch.randn(2, 1, 28, 28),
                                                        target="params=0.1", seed=seed,
                                                        options={"sampling": sampling}))
            runs.append(pk.evaluate(m, b.test)["accuracy"])
        out[sampling] = runs
    return out


def check_net_trim_layers():
    """Per-layer figures behind one net-trim row of benchmarks/results/net_trim_fair.md (seed 0, the recipe's
    options): the bench table keeps only the scalar telemetry."""
    from prunekit import workflows as W
    from prunekit.train.baseline import load_baseline

    bundle = pk.data.load("fashion-mnist", batch_size=128, subset=5000, seed=0, augment=False)
    out = {}
    for target in ("sparsity=0.9", "sparsity=0.95"):
        m = load_baseline("lenet300-fashion-mnist")
        res = get_method("net-trim").run(RunContext(
            model=m, example_inputs=None, target=target, calib=W.calib_batches(bundle, 8),
            options={"steer": "epsilon", "max_samples": 1024, "iters": 150, "search_steps": 5}))
        out[target] = {"accuracy_after_cut": pk.evaluate(m, bundle.test)["accuracy"], "epsilon": res.info["epsilon"],
                       "telemetry": res.telemetry, "search": res.info["search"],
                       "mask_sparsity": {f: 1 - float(k.float().mean()) for f, k in pk.masks.get_masks(m).items()}}
    return out


CHECKS = {"net-trim": check_net_trim, "coreset-neuron": check_coreset, "net-trim-layers": check_net_trim_layers}

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=list(CHECKS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    load_all()
    for name in args.only:
        print(json.dumps({name: CHECKS[name]()}, default=str), flush=True)
