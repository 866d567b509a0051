"""Entry checks of the frozen-weight methods (docs/methods-weight-11.md), on real Fashion-MNIST, one CPU worker.

    python benchmarks/frozen_checks.py lth [--seeds 0] [--epochs 3] [--init he-uniform|torch-default]
        proving-lth: frozen random LeNet-300-100, a 50% edge-popup supermask trained for 3 epochs on the 60,000
        training images; test accuracy of the random dense net and of the supermasked net on the 10,000 test
        images; the kept weights compared bit by bit with the draw. The weights are drawn Kaiming-uniform
        (``he-uniform``: ``kaiming_uniform_(w, nonlinearity="relu")``, He et al. 2015, the entry's draw) or left
        at PyTorch's Linear default (``torch-default``: kaiming_uniform_ with a = sqrt(5), a sqrt(6) smaller
        bound); the biases keep PyTorch's default draw either way.
    python benchmarks/frozen_checks.py pfs [--seeds 0 1 2] [--epochs 2] [--subset 2000] [--test 2000]
                                           [--width 0.5] [--gate-batch 16]
        pfs (scaled): ResNet-20 at half width; gates learned for 1 epoch on the frozen random draw (r = 0.2; batches
        of 16 so that the 2,000 images give 125 Adam steps), the widths cut to macs=0.5; that architecture against
        a uniform-width one and a random-width one of the same MACs, each re-initialised and trained from scratch
        for the same epochs on the same images (scaled to what one shared CPU core runs in ~15 minutes).

Results go to benchmarks/results/frozen_checks.json, one cell per (check, seed), written as each finishes; a
rerun skips the cells already there (resumable).
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import pathlib
import time

import torch

import prunekit as pk
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods._filter_common import _graph, cut_to_target, filter_groups, fresh_initialisation
from prunekit.methods.pfs import gated_groups
from prunekit.train import TrainConfig, evaluate, fit

OUT = pathlib.Path(__file__).parent / "results" / "frozen_checks.json"


def _load() -> dict:
    return json.loads(OUT.read_text()) if OUT.exists() else {}


def _save(results: dict) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


def lth_cell(seed: int, epochs: int, init: str) -> dict:
    data = pk.data.load("fashion-mnist", batch_size=128, val_fraction=0.0, augment=False, seed=seed)
    torch.manual_seed(seed)
    model = pk.models.create("lenet300")
    if init == "he-uniform":
        for mod in model.modules():
            if isinstance(mod, torch.nn.Linear):
                torch.nn.init.kaiming_uniform_(mod.weight, nonlinearity="relu")
    drawn = {k: v.clone() for k, v in model.state_dict().items()}
    random_acc = evaluate(model, data.test)["accuracy"]
    t0 = time.time()
    res = get_method("proving-lth").run(RunContext(
        model=model, example_inputs=torch.zeros(1, 1, 28, 28), target="sparsity=0.5", train_data=data.train,
        prune_epochs=epochs, seed=seed))
    seconds = time.time() - t0
    after = model.state_dict()
    kept_identical = all(torch.equal(after[k][after[k] != 0], drawn[k][after[k] != 0]) for k in drawn)
    zeros = {k: float((after[k] == 0).float().mean()) for k in drawn if k.endswith("weight")}
    return {"random_dense_acc": random_acc, "supermask_acc": evaluate(model, data.test)["accuracy"],
            "kept_weights_bit_identical": kept_identical, "weight_zero_fraction": zeros,
            "telemetry": res.telemetry, "engaged": res.engaged, "epochs": epochs, "init": init,
            "seconds": seconds}


def pfs_cell(seed: int, epochs: int, subset: int, width: float, n_test: int, gate_batch: int,
             target: str = "macs=0.5") -> dict:
    data = pk.data.load("fashion-mnist", batch_size=128, val_fraction=0.0, augment=False, seed=seed,
                        subset=(subset, n_test))
    gate_data = pk.data.load("fashion-mnist", batch_size=gate_batch, val_fraction=0.0, augment=False, seed=seed,
                             subset=(subset, n_test)).train  # the same images in smaller batches: more gate steps
    ex = torch.zeros(1, 1, 28, 28)
    cfg = TrainConfig(epochs=epochs, lr=0.1, progress=False, seed=seed)
    torch.manual_seed(seed)
    dense = pk.models.create("resnet20", width=width)
    out: dict = {"epochs": epochs, "train_images": subset, "test_images": n_test, "target": target, "width": width,
                 "gate_batch": gate_batch, "dense_macs": int(_graph(dense, RunContext(
                     model=dense, example_inputs=ex, target=target)).macs())}
    groups = gated_groups(filter_groups(dense, RunContext(model=dense, example_inputs=ex, target=target)))
    gen = torch.Generator().manual_seed(seed + 7919)
    for name in ("pfs", "uniform", "random"):
        m = copy.deepcopy(dense)
        ctx = RunContext(model=m, example_inputs=ex, target=target)
        row: dict = {}
        if name == "pfs":  # gates 1 epoch on the frozen draw, global gate cut; the scratch training is below
            t0 = time.time()
            res = get_method("pfs").run(RunContext(model=m, example_inputs=ex, target=target, train_data=gate_data,
                                                   prune_epochs=1, seed=seed, options={"scratch_epochs": 0}))
            info = res.info
            row.update(telemetry=res.telemetry, engaged=res.engaged, gate_seconds=time.time() - t0)
        elif name == "uniform":  # the same fraction of every gated group, filled to the same MACs
            info = cut_to_target(m, ctx, {g.key: torch.ones(g.width) for g in groups}, allocation="uniform")
        else:  # random channels of the gated groups, one global ranking: random per-layer widths
            info = cut_to_target(m, ctx, {g.key: torch.rand(g.width, generator=gen) + 1 for g in groups},
                                 allocation="global")
        m.load_state_dict(fresh_initialisation(m, seed))  # every arm: a fresh draw, the same training
        t0 = time.time()
        fit(m, data.train, cfg)
        row.update(acc=evaluate(m, data.test)["accuracy"], widths=info["widths"], macs=info["pruned_macs"],
                   seconds=time.time() - t0)
        out[name] = row
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("check", choices=("lth", "pfs"))
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--subset", type=int, default=2000)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--gate-batch", type=int, default=16)
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--init", choices=("he-uniform", "torch-default"), default="he-uniform")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    load_all()
    results = _load()
    seeds = a.seeds or ([0] if a.check == "lth" else [0, 1, 2])
    for seed in seeds:
        key = f"lth/{a.init}/seed={seed}" if a.check == "lth" else f"pfs/seed={seed}"
        if key in results:
            continue
        cell = (lth_cell(seed, a.epochs or 3, a.init) if a.check == "lth"
                else pfs_cell(seed, a.epochs or 2, a.subset, a.width, a.test, a.gate_batch))
        results = _load()
        results[key] = cell
        _save(results)
        print(key, json.dumps(cell))


if __name__ == "__main__":
    main()
