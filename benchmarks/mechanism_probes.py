"""Probes of two training-time mechanisms on the benchmark setting (shipped ResNet-20, Fashion-MNIST subset).

Each trains the shipped baseline the way the method does and prints the mechanism's figure after every
epoch, without the cut, so the budget at which the mechanism acts can be read off cheaply:

    python benchmarks/mechanism_probes.py csgd --eps 3,10 --epochs 3
        C-SGD's largest intra-cluster distance / mean filter norm (k-means clusters at the target's widths)
    python benchmarks/mechanism_probes.py implicit --epochs 4 [--optimizer adam --lr 1e-3 --weight-decay 5e-4]
        implicit-sparsity's dead channels (zero post-ReLU input of every reader on 16 calibration batches,
        or |gamma| < 1e-3)

Protocol as benchmarks/recipes/filter_full.yaml: 5,000-image subset (4,500 for training: 36 steps of 128),
lr 0.01 cosine, SGD momentum 0.9, weight decay 5e-4 (TrainConfig defaults), seed 0.
"""
from __future__ import annotations

import argparse
import time

import torch

import prunekit as pk
from prunekit.methods import RunContext
from prunekit.methods.csgd import centripetal_callback, cluster_groups, cluster_spread
from prunekit.methods.implicit_sparsity import dead_channels
from prunekit.train import baseline as baselines


def _setup(args):
    data = pk.data.load("fashion-mnist", batch_size=128, subset=args.subset, seed=0)
    model = baselines.load_baseline("baselines/resnet20-fashion-mnist.safetensors")
    ctx = RunContext(model=model, example_inputs=data.example_inputs(2), target=args.target, calib=data.calib(16),
                     seed=0)
    return data, model, ctx


class _EachEpoch(pk.train.Callback):
    def __init__(self, fn):
        self.fn, self.values = fn, []

    def on_epoch_end(self, state):
        self.values.append(self.fn())


def probe_csgd(args) -> None:
    for eps in [float(e) for e in args.eps.split(",")]:
        data, model, ctx = _setup(args)
        groups, clusters = cluster_groups(model, ctx)
        start = cluster_spread(model, groups, clusters)
        probe = _EachEpoch(lambda: round(cluster_spread(model, groups, clusters), 5))
        t = time.time()
        pk.fit(model, data.train, pk.TrainConfig(epochs=args.epochs, lr=args.lr or 0.01, progress=False),
               callbacks=[centripetal_callback(model, groups, clusters, eps, 0.1), probe])
        print(f"csgd eps={eps} steps/epoch={len(data.train)} spread start={start:.3f} after each epoch="
              f"{probe.values} ({time.time() - t:.0f}s)", flush=True)


def probe_implicit(args) -> None:
    data, model, ctx = _setup(args)

    def n_dead():
        return sum(int(d.sum()) for d in dead_channels(model, ctx)[1].values())

    probe = _EachEpoch(n_dead)
    t = time.time()
    pk.fit(model, data.train, pk.TrainConfig(epochs=args.epochs, lr=args.lr or 1e-3, optimizer=args.optimizer,
                                             weight_decay=args.weight_decay, progress=False), callbacks=[probe])
    n = sum(len(d) for d in dead_channels(model, ctx)[1].values())
    acc = pk.evaluate(model, data.test)["accuracy"]
    print(f"implicit {args.optimizer} lr={args.lr or 1e-3} wd={args.weight_decay} dead channels after each epoch="
          f"{probe.values} of {n}; test accuracy {acc:.4f} ({time.time() - t:.0f}s)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mechanism", choices=["csgd", "implicit"])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--eps", default="3,10")
    p.add_argument("--optimizer", default="adam")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--subset", type=int, default=5000)
    p.add_argument("--target", default="macs=0.25")
    args = p.parse_args()
    torch.set_num_threads(1)
    (probe_csgd if args.mechanism == "csgd" else probe_implicit)(args)


if __name__ == "__main__":
    main()
