"""Small-scale checks of han-magnitude and dns over seeds (the protocol of their slow tests).

LeNet-300-100, Fashion-MNIST 6,000 / 2,000 images (seeded subset, no augmentation), dense 4 epochs (SGD 0.05,
cosine). han-magnitude: 92% in 3 rounds with 1 epoch of retraining between rounds + 1 final epoch (lr 0.01), vs
one-shot 92% with the same std rule + 3 epochs (lr 0.01). dns: 95% during 2 epochs (lr 0.01) + 1 epoch with
frozen masks, vs one-shot magnitude 95% per layer + 3 epochs. Prints one JSON line per seed.

    python benchmarks/weight_han_dns_checks.py --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import copy
import json

import torch

import prunekit as pk
from prunekit.masks import sparsify_
from prunekit.methods import RunContext, get_method, load_all


def main(seeds) -> None:
    torch.set_num_threads(1)
    load_all()
    bundle = pk.data.load("fashion-mnist", batch_size=128, subset=(6000, 2000), augment=False, val_fraction=0)
    for seed in seeds:
        torch.manual_seed(seed)
        dense = pk.models.create("lenet300", num_classes=10, in_channels=1, input_size=28)
        cfg = pk.TrainConfig(epochs=4, lr=0.05, progress=False, seed=seed)
        pk.fit(dense, bundle.train, cfg)
        row = {"seed": seed, "dense": pk.evaluate(dense, bundle.test)["accuracy"]}
        it = copy.deepcopy(dense)
        ctx = RunContext(model=it, example_inputs=None, target="sparsity=0.92", train_data=bundle.train, seed=seed,
                         options={"rounds": 3, "retrain_epochs": 1, "retrain_lr_factor": 0.2}, train_config=cfg)
        get_method("han-magnitude").run(ctx)
        pk.fit(it, bundle.train, cfg.replace(epochs=1, lr=0.01))
        row["han_iterative"] = pk.evaluate(it, bundle.test)["accuracy"]
        os_ = copy.deepcopy(dense)
        ctx = RunContext(model=os_, example_inputs=None, target="sparsity=0.92", train_data=bundle.train, seed=seed,
                         options={"rounds": 1}, train_config=cfg)
        get_method("han-magnitude").run(ctx)
        pk.fit(os_, bundle.train, cfg.replace(epochs=3, lr=0.01))
        row["han_one_shot"] = pk.evaluate(os_, bundle.test)["accuracy"]
        d = copy.deepcopy(dense)
        ctx = RunContext(model=d, example_inputs=None, target="sparsity=0.95", train_data=bundle.train, seed=seed,
                         prune_epochs=2, train_config=cfg.replace(lr=0.01))
        res = get_method("dns").run(ctx)
        pk.fit(d, bundle.train, cfg.replace(epochs=1, lr=0.01))
        row["dns"] = pk.evaluate(d, bundle.test)["accuracy"]
        row["dns_splices"] = res.telemetry["splices"]
        o = copy.deepcopy(dense)
        sparsify_(o, sparsity=0.95)
        pk.fit(o, bundle.train, cfg.replace(epochs=3, lr=0.01))
        row["dns_one_shot"] = pk.evaluate(o, bundle.test)["accuracy"]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    main(p.parse_args().seeds)
