"""The small-scale check of adv-admm (entry ``adv-admm`` in the method notes), scaled to one core.

LeNet-5 on a seeded Fashion-MNIST subset (10,000 train / 2,000 test images, no augmentation), PGD with
eps = 0.1 (pixel units), 5 steps of 0.025, random start, for training and for the robust accuracy; 50% of the
filters of each conv layer (fc layers dense). Every row trains the same total number of epochs (``--epochs``
split as pre-training / method / retraining, default 2 + 2 + 2):

* ``dense_adv``: adversarial training for all epochs, no pruning;
* ``adv_admm``: adversarial pre-training, adv-admm (W-steps on PGD batches), hard prune, adversarial retraining;
* ``admm_clean``: the same ADMM with clean W-steps (natural pre-training), then adversarial retraining;
* ``natural_magnitude``: natural training, filter-norm (magnitude) prune, adversarial fine-tuning (entry check c).

Prints and writes JSON (``--out``): natural and PGD accuracy on the test subset, nonzero filters per conv and
the method's telemetry. Usage: ``nice python benchmarks/adv_checks.py [--seeds 0] [--rho 0.1] [--rows ...] [--out FILE]``.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

import prunekit as pk
from prunekit.masks import install_masks_, prunable_weights
from prunekit.methods import RunContext, get_method, load_all
from prunekit.train.adversarial import AdversarialTraining, InputSpace, robust_accuracy
from prunekit.train.constrained import Projection

EPS, STEPS, ALPHA = 0.1, 5, 0.025
CONVS = ("conv1", "conv2")
IGNORE = ("fc1", "fc2")
ROWS = ("dense_adv", "adv_admm", "admm_clean", "natural_magnitude")


def _setup(seed):
    b = pk.data.load("fashion-mnist", batch_size=128, subset=(10000, 2000), val_fraction=0.0, augment=False)
    torch.manual_seed(seed)
    return b, pk.models.create("lenet5"), InputSpace.of(b.train)


def _cfg(epochs, seed):
    return pk.TrainConfig(epochs=epochs, lr=0.05, seed=seed, progress=False)


def _adv(space, seed):
    return AdversarialTraining(EPS, steps=STEPS, alpha=ALPHA, space=space, seed=seed)


def _score(m, b, space, seed):
    r = robust_accuracy(m, b.test, eps=EPS, steps=STEPS, alpha=ALPHA, space=space, seed=seed)
    filters = {c: int((getattr(m, c).weight.detach().flatten(1).abs().sum(1) > 0).sum()) for c in CONVS}
    return {"natural": r["clean"], "pgd": r["robust"], "nonzero_filters": filters}


def run_seed(seed, pre, mid, post, rho=0.1, rows=ROWS):
    out = {}
    total = pre + mid + post
    if "dense_adv" in rows:
        b, m, space = _setup(seed)  # dense adversarial training, all epochs
        pk.fit(m, b.train, _cfg(total, seed), callbacks=[_adv(space, seed)])
        out["dense_adv"] = _score(m, b, space, seed)
    for row, eps in (("adv_admm", EPS), ("admm_clean", 0.0)):
        if row not in rows:
            continue
        b, m, space = _setup(seed)
        pk.fit(m, b.train, _cfg(pre, seed), callbacks=[_adv(space, seed)] if eps else [])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # admm_clean has no PGD W-steps: its MechanismWarning is expected
            res = get_method("adv-admm").run(RunContext(
                model=m, example_inputs=None, target="sparsity=0.5", train_data=b.train, val_data=b.test,
                ignore=IGNORE, prune_epochs=mid, train_config=_cfg(mid, seed), seed=seed,
                options={"eps": eps, "steps": STEPS, "alpha": ALPHA, "pattern": "row", "iterations": 4,
                         "rho": rho, "lr": 0.05}))
        pk.fit(m, b.train, _cfg(post, seed), callbacks=[_adv(space, seed)])
        out[row] = {**_score(m, b, space, seed), "telemetry": res.telemetry, "engaged": res.engaged}
    if "natural_magnitude" in rows:
        b, m, space = _setup(seed)  # natural training, filter-norm prune, adversarial fine-tune
        pk.fit(m, b.train, _cfg(pre + mid, seed))
        w = {k: v.detach() for k, v in prunable_weights(m, IGNORE).items()}
        install_masks_(m, Projection(sparsity=0.5, pattern="row").masks(w), mode="hard")
        pk.fit(m, b.train, _cfg(post, seed), callbacks=[_adv(space, seed)])
        out["natural_magnitude"] = _score(m, b, space, seed)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, nargs=3, default=[2, 2, 2], metavar=("PRE", "ADMM", "RETRAIN"))
    ap.add_argument("--rho", type=float, default=0.1, help="adv-admm's initial penalty (grows x1.3 per update)")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    load_all()
    results = {"eps": EPS, "steps": STEPS, "alpha": ALPHA, "epochs": a.epochs, "rho": a.rho, "seeds": {}}
    for s in a.seeds:
        t0 = time.perf_counter()
        results["seeds"][s] = run_seed(s, *a.epochs, rho=a.rho, rows=a.rows)
        results["seeds"][s]["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({s: results["seeds"][s]}, indent=1), flush=True)
        if a.out:
            with open(a.out, "w") as f:
                json.dump(results, f, indent=1)
