"""The small-scale check of swp (entry ``swp`` in the method notes), scaled to one shared core.

vgg-small at width 0.5 (6 convs 3x3: 16, 16, 32, 32, 64, 64 channels) on a seeded Fashion-MNIST subset
(``--subset`` train / test images, no augmentation), SGD lr 0.05, momentum 0.9, wd 1e-4 (the paper's), batch 128.
Rows, each trained ``--epochs`` epochs from the same seeded initialisation:

* ``dense``: plain training (entry check c's reference);
* ``swp alpha=A``: the swp method (Filter Skeleton, L1 strength A, delta 0.01) for the same epochs, then the cut.
  The entry's alpha = 1e-4 is given for 5 full epochs; at our ~400 steps the push alpha * sum(lr) is far smaller
  than the paper's (1e-5 x 160 CIFAR epochs), so a second alpha keeps the paper's total push (``--alphas``).

Per SWP row: test accuracy of the cut model, the telemetry (stripes zeroed, partial filters, filters removed), the
max abs logit difference between the masked model and its stripe export (entry check b), and for the dense
model, the cut masked model and the stripe export: MACs and parameters (``pk.measure``: the stripe export's
MACs are those of its kept stripes' 1x1 convs) and measured CPU latency (batch 1, one thread: ``pk.measure``'s wall-clock median of 3 x 30, and this
process's CPU time per forward over 50 forwards, which other processes' load does not inflate).
Usage: ``nice python benchmarks/swp_check.py [--epochs 5] [--subset 10000 2000] [--alphas 1e-4 6e-3]
[--no-dense] [--out FILE]``.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import warnings

import torch

import prunekit as pk
from prunekit.measure import latency
from prunekit.methods import RunContext, get_method, load_all
from prunekit.surgery.stripe import to_stripes_


def _setup(seed, subset):
    b = pk.data.load("fashion-mnist", batch_size=128, subset=tuple(subset), val_fraction=0.0, augment=False)
    torch.manual_seed(seed)
    return b, pk.models.create("vgg-small", width=0.5)


def _cfg(epochs, seed):
    return pk.TrainConfig(epochs=epochs, lr=0.05, momentum=0.9, weight_decay=1e-4, seed=seed, progress=False)


def _costs(models: dict, x1) -> dict:
    out = {k: {"macs": int(pk.measure(m, x1).macs), "params": int(sum(p.numel() for p in m.parameters()))}
           for k, m in models.items()}
    lat = {k: [] for k in models}
    for _ in range(3):  # alternate, so every model sees the same machine load
        for k, m in models.items():
            lat[k].append(latency(m, x1, warmup=5, runs=30).median_ms)
    for k, m in models.items():
        out[k]["latency_ms"] = round(statistics.median(lat[k]), 3)
        m.eval()
        with torch.no_grad():  # CPU time of this process: what the forward costs, whatever the machine's load
            for _ in range(3):
                m(x1)
            c = time.process_time()
            for _ in range(50):
                m(x1)
        out[k]["cpu_ms_per_forward"] = round((time.process_time() - c) / 50 * 1e3, 3)
    return out


def run(seed, epochs, subset, alphas, dense_row=True):
    res = {}
    b, m = _setup(seed, subset)
    dense = m  # without the dense row: the untrained net (MACs, parameters and latency do not depend on weights)
    if dense_row:
        t0 = time.perf_counter()
        pk.fit(m, b.train, _cfg(epochs, seed))
        res["dense"] = {"accuracy": pk.evaluate(m, b.test)["accuracy"], "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps(res["dense"]), flush=True)
    x1 = b.example_inputs(1)
    for a in alphas:
        b, m = _setup(seed, subset)
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            r = get_method("swp").run(RunContext(model=m, example_inputs=b.example_inputs(2), target="macs=0.5",
                                                 train_data=b.train, prune_epochs=epochs,
                                                 train_config=_cfg(epochs, seed), seed=seed,
                                                 options={"alpha": a}))
        m.eval()
        stripe = copy.deepcopy(m)
        pk.finalize_(stripe)
        to_stripes_(stripe)
        with torch.no_grad():
            diff = max(float((stripe(x) - m(x)).abs().max()) for x, _ in list(b.test)[:4])
        row = {"accuracy": pk.evaluate(m, b.test)["accuracy"], "stripe_accuracy": pk.evaluate(stripe, b.test)["accuracy"],
               "telemetry": r.telemetry, "engaged": r.engaged, "warnings": [str(x.message) for x in w],
               "stripes": r.info["stripes"], "stripes_kept": r.info["stripes_kept"],
               "max_abs_logit_diff_masked_vs_stripe": diff, "seconds": round(time.perf_counter() - t0, 1),
               "cost": _costs({"dense": dense, "swp_masked_kxk": m, "swp_stripe_export": stripe}, x1)}
        res[f"swp alpha={a:g}"] = row
        print(json.dumps({f"swp alpha={a:g}": row}), flush=True)
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--subset", type=int, nargs=2, default=[10000, 2000])
    ap.add_argument("--alphas", type=float, nargs="+", default=[1e-4, 6e-3])
    ap.add_argument("--no-dense", action="store_true", help="skip the dense training row")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    load_all()
    out = {"seed": a.seed, "epochs": a.epochs, "subset": a.subset, "model": "vgg-small width 0.5",
           "rows": run(a.seed, a.epochs, a.subset, a.alphas, not a.no_dense)}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
