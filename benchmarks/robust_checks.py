"""Robust methods at 2x and 4x compression on Fashion-MNIST (issue 22), scaled to one core.

LeNet-5 on a seeded Fashion-MNIST subset (``--subset``, default 5,000 train / 1,000 test images, no augmentation). One attack for
training and evaluation: PGD, eps = 0.1 (pixel units), 5 steps of 0.025, random start. Every row trains the
same total number of epochs, ``--epochs PRE MID POST`` (default 2 + 1 + 1). ``PRE`` epochs of adversarial
training are shared by the robust rows (computed once per seed); then:

* ``dense_at``: adversarial training continues for MID + POST epochs, no pruning;
* ``magnitude_at_{2x,4x}``: global magnitude pruning of the adversarially trained model to 50% / 75% zeros
  (hard masks), then MID + POST epochs of adversarial fine-tuning (the issue's control);
* ``adv_admm_{2x,4x}``: adv-admm for MID epochs (element pattern, 4 updates, rho 0.1, lr 0.05), hard prune,
  POST epochs of adversarial retraining;
* ``atmc_{2x,4x}``: atmc for MID epochs (global l0 budget, 8-bit k-means quantisation by ADMM at its defaults
  rho 0.1 / every 5 batches; lr 0.05), then POST epochs with its callbacks (shared centroids + PGD batches);
* ``anp_vs_{2x,4x}``: anp-vs for MID epochs at params=0.5 / 0.25 (its defaults but mask_lr 0.1: at the
  paper's 1e-2 a mask moves at most ~0.8 in 79 Adam steps and none reaches E[pi] <= 1e-3), then POST epochs
  of adversarial fine-tuning (its callback);
* ``natural_mag_quant_{2x,4x}``: ATMC's entry control: natural training PRE + MID epochs, global magnitude
  pruning, POST epochs of natural fine-tuning, then 8-bit k-means weight sharing of the survivors.

Per row: natural and PGD accuracy on the test subset, nonzero fraction of the conv/linear weights,
parameters, the largest count of distinct nonzero values in a layer, the measured vulnerability (mean
|z - z~| over the conv1/conv2/fc1 outputs on 4 test batches, the anp-vs definition), the method's telemetry.
Resumable: rows already in ``--out`` are skipped. Usage:
``nice python benchmarks/robust_checks.py [--seeds 0] [--rows ...] --out benchmarks/results/robust_checks_lenet5.json``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time
import warnings

import torch

import prunekit as pk
from prunekit.masks import install_masks_, prunable_weights
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.anp_vs import vulnerability
from prunekit.quantize import bits_used, share_weights_
from prunekit.train.adversarial import AdversarialTraining, InputSpace, robust_accuracy
from prunekit.train.constrained import Projection

EPS, STEPS, ALPHA = 0.1, 5, 0.025
RATES = {"2x": 0.5, "4x": 0.75}
ROWS = ("dense_at", *(f"{r}_{c}" for c in RATES
                      for r in ("atmc", "anp_vs", "magnitude_at", "adv_admm", "natural_mag_quant")))


SUBSET = [5000, 1000]


def _data():
    return pk.data.load("fashion-mnist", batch_size=128, subset=tuple(SUBSET), val_fraction=0.0, augment=False)


def _cfg(epochs, seed):
    return pk.TrainConfig(epochs=epochs, lr=0.05, seed=seed, progress=False)


def _adv(space, seed):
    return AdversarialTraining(EPS, steps=STEPS, alpha=ALPHA, space=space, seed=seed)


def _score(m, b, space, seed):
    m.eval()
    r = robust_accuracy(m, b.test, eps=EPS, steps=STEPS, alpha=ALPHA, space=space, seed=seed)
    w = [p.detach() for n, p in m.named_parameters() if n.endswith("weight") and p.dim() > 1]
    used = bits_used(m)
    mods = {k: [getattr(m, k)] for k in ("conv1", "conv2", "fc1")}
    v = vulnerability(m, mods, list(b.test)[:4], eps=EPS, steps=STEPS, alpha=ALPHA, space=space, seed=seed)
    return {"natural": r["clean"], "pgd": r["robust"],
            "nonzero": sum(int((t != 0).sum()) for t in w) / sum(t.numel() for t in w),
            "params": sum(p.numel() for p in m.parameters()),
            "max_distinct": max(u["distinct"] for u in used.values()), "vulnerability": v}


def _pretrained(seed, pre, kind, cache):
    """The model after PRE epochs of adversarial ("at") or natural training, computed once per seed."""
    key = (seed, pre, kind)
    if key not in cache:
        b = _data()
        space = InputSpace.of(b.train)
        torch.manual_seed(seed)
        m = pk.models.create("lenet5")
        pk.fit(m, b.train, _cfg(pre, seed), callbacks=[_adv(space, seed)] if kind == "at" else [])
        cache[key] = m
    return copy.deepcopy(cache[key])


def _magnitude(m, rate):
    w = {k: v.detach() for k, v in prunable_weights(m).items()}
    install_masks_(m, Projection(sparsity=rate, scope="global").masks(w), mode="hard")


def run_row(row, seed, pre, mid, post, cache):
    b = _data()
    space = InputSpace.of(b.train)
    name, _, comp = row.rpartition("_") if row != "dense_at" else (row, "", "")
    rate = RATES.get(comp)
    t0 = time.perf_counter()
    extra = {}
    if row == "dense_at":
        m = _pretrained(seed, pre, "at", cache)
        pk.fit(m, b.train, _cfg(mid + post, seed), callbacks=[_adv(space, seed + 1)])
    elif name == "magnitude_at":
        m = _pretrained(seed, pre, "at", cache)
        _magnitude(m, rate)
        pk.fit(m, b.train, _cfg(mid + post, seed), callbacks=[_adv(space, seed + 1)])
    elif name == "natural_mag_quant":
        m = _pretrained(seed, pre + mid, "natural", cache)
        _magnitude(m, rate)
        pk.fit(m, b.train, _cfg(post, seed))
        share_weights_(m, bits_conv=8, bits_fc=8)
    else:
        m = _pretrained(seed, pre, "at", cache)
        mid_id, target, options = {
            "adv_admm": ("adv-admm", f"sparsity={rate}", {"eps": EPS, "steps": STEPS, "alpha": ALPHA, "iterations": 4,
                                                         "rho": 0.1, "lr": 0.05}),
            "atmc": ("atmc", f"sparsity={rate}", {"eps": EPS, "steps": STEPS, "alpha": ALPHA, "lr": 0.05}),
            "anp_vs": ("anp-vs", f"params={1 - rate}", {"eps": EPS, "steps": STEPS, "alpha": ALPHA, "mask_lr": 0.1}),
        }[name]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = get_method(mid_id).run(RunContext(
                model=m, example_inputs=torch.zeros(1, 1, 28, 28), target=target, train_data=b.train,
                val_data=list(b.test)[:2], prune_epochs=mid, train_config=_cfg(mid, seed), seed=seed,
                ignore=("fc2",) if mid_id == "anp-vs" else (), options=options))
        warned = [str(w.message) for w in caught if "Mechanism" in type(w.message).__name__]
        extra = {"telemetry": res.telemetry, "engaged": res.engaged, "warnings": warned}
        extra["after_method"] = _score(m, b, space, seed)
        pk.fit(m, b.train, _cfg(post, seed), callbacks=res.callbacks)
    return {**_score(m, b, space, seed), **extra, "epochs": pre + mid + post,
            "seconds": round(time.perf_counter() - t0, 1)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, nargs=3, default=[2, 1, 1], metavar=("PRE", "MID", "POST"))
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    ap.add_argument("--subset", type=int, nargs=2, default=SUBSET, metavar=("TRAIN", "TEST"))
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    SUBSET[:] = a.subset
    torch.set_num_threads(1)
    load_all()
    results = {"eps": EPS, "steps": STEPS, "alpha": ALPHA, "epochs": a.epochs, "subset": a.subset, "seeds": {}}
    if a.out and os.path.exists(a.out):
        with open(a.out) as f:
            results = json.load(f)
    cache: dict = {}
    for s in a.seeds:
        done = results["seeds"].setdefault(str(s), {})
        for row in a.rows:
            if row in done:
                continue
            done[row] = run_row(row, s, *a.epochs, cache)
            print(json.dumps({s: {row: done[row]}}), flush=True)
            if a.out:
                with open(a.out, "w") as f:
                    json.dump(results, f, indent=1)
