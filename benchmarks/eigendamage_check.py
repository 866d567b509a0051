"""The eigendamage entry check on the shipped small VGG / Fashion-MNIST (issue 21), printed as JSON lines.

Protocol (the entry's small-scale check at the shared machine's budget): the shipped baseline
``baselines/vgg-small-fashion-mnist.safetensors``; ``--calib`` batches of 128 training images for the
curvature (K-FAC factors / diagonal Fisher, labels sampled from the model: the true Fisher); every row prunes
to ``--target`` (fraction of parameters kept, the factorised layers' rotations counted), the classifier kept.
Rows: ``eigendamage`` (its defaults), ``c-obd`` (criterion ``fisher-obd`` through the engine, global
allocation, the producer's weights), ``l1`` (global magnitude). Accuracy on ``--test`` test images right
after the cut, after BN recalibration on the calibration batches, and after ``--epochs`` epochs of
fine-tune (SGD lr ``--lr``, cosine, batch 128) on ``--train`` training images; the dense row is the
baseline's accuracy on the same images.

Usage: nice python benchmarks/eigendamage_check.py [--seeds 0] [--target params=0.5]
"""
from __future__ import annotations

import argparse
import copy
import json

import torch

import prunekit as pk
from prunekit.criteria.collect import sampled_label_loss
from prunekit.methods import RunContext, get_method, load_all
from prunekit.train.baseline import load_baseline
from prunekit.workflows import recalibrate_bn

load_all()


def acc(m, batches):
    return pk.evaluate(m, batches)["accuracy"]


def prune(row, m, calib, target, seed):
    x = torch.zeros(1, 1, 28, 28)
    if row == "eigendamage":
        res = get_method("eigendamage").run(RunContext(model=m, example_inputs=x, target=target, calib=calib,
                                                       seed=seed))
        return {"telemetry": res.telemetry}
    crit = {"c-obd": "fisher-obd", "l1": "l1"}[row]
    loss = sampled_label_loss(torch.Generator().manual_seed(seed)) if crit == "fisher-obd" else None
    pk.prune_(m, example_inputs=x, criterion=crit, target=target, calib=calib, ignore=["fc"],
              allocation="global", reduce="producer", loss_fn=loss, seed=seed)
    return {}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--target", default="params=0.5")
    ap.add_argument("--rows", nargs="+", default=["eigendamage", "c-obd", "l1"])
    ap.add_argument("--calib", type=int, default=8)
    ap.add_argument("--train", type=int, default=6000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.01)
    a = ap.parse_args()
    torch.set_num_threads(1)
    b = pk.data.load("fashion-mnist", batch_size=128, subset=(a.train, a.test), val_fraction=0.0, augment=False)
    test = list(b.test)
    base = load_baseline("vgg-small-fashion-mnist")
    x = torch.zeros(1, 1, 28, 28)
    dense = pk.measure(base, x, sizes=False)
    print(json.dumps({"row": "dense", "acc": acc(base, test), "params": dense.params, "macs": dense.macs}),
          flush=True)
    for seed in a.seeds:
        calib = b.calib(a.calib, 128)
        for row in a.rows:
            torch.manual_seed(seed)
            m = copy.deepcopy(base)
            out = {"row": row, "seed": seed, "target": a.target}
            out.update(prune(row, m, calib, a.target, seed))
            meas = pk.measure(m, x, sizes=False)
            out.update(params=meas.params / dense.params, macs=meas.macs / dense.macs, cut=acc(m, test))
            recalibrate_bn(m, calib)
            out["bn_recal"] = acc(m, test)
            pk.fit(m, b.train, pk.TrainConfig(epochs=a.epochs, lr=a.lr, seed=seed, progress=False))
            out["finetuned"] = acc(m, test)
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
