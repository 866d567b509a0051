"""Pruning at and near initialisation on LeNet-300-100 / Fashion-MNIST (3 seeds, resumable).

* Lottery tickets (lth): ticket found by iterative magnitude pruning with rewinding to init vs the same
  mask with random re-initialisation vs the dense net, at 80% and 95% sparsity.
* SNIP and SNIP-LDI at initialisation vs uniform random pruning (same sparsity in every layer) at 90, 95
  and 98% sparsity.

Scaled protocol (shared 2-core CPU): 10,000 training images (no augmentation), batch 128; every network
is trained `--epochs` epochs (default 3) after pruning with Adam (lr 1.2e-3, as the LTH paper's LeNet);
ticket search rounds train 1 epoch each (3 rounds to 80%, 5 rounds to 95%). Accuracy on the complete
test set. Each finished (experiment, sparsity, seed) is appended to <out>.jsonl and skipped on rerun.

Usage: python benchmarks/weight_init.py [--out runs/weight_init] [--epochs 3] [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics

import torch


def main():
    import prunekit as pk
    from prunekit.masks import sparsify_
    from prunekit.train.rewind import find_ticket, reinit_
    from prunekit.methods import RunContext, get_method, load_all

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/weight_init")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_all()
    path = f"{args.out}.jsonl"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    done = {}
    if os.path.exists(path):
        for line in open(path):
            row = json.loads(line)
            done[(row["exp"], row["sparsity"], row["seed"])] = row

    def record(exp, sparsity, seed, acc, **extra):
        row = {"exp": exp, "sparsity": sparsity, "seed": seed, "accuracy": acc, **extra}
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
        done[(exp, sparsity, seed)] = row

    cfg = pk.TrainConfig(epochs=args.epochs, lr=1.2e-3, optimizer="adam", weight_decay=0.0, scheduler="constant",
                         progress=False)
    for seed in args.seeds:
        bundle = pk.data.load("fashion-mnist", batch_size=128, subset=10000, augment=False, seed=seed)

        def fresh():
            torch.manual_seed(seed)
            return pk.models.create("lenet300", num_classes=10, in_channels=1, input_size=28)

        def train_eval(model):
            pk.fit(model, bundle.train, cfg.replace(seed=seed))
            return pk.evaluate(model, bundle.test)["accuracy"]

        if ("dense", 0.0, seed) not in done:
            record("dense", 0.0, seed, train_eval(fresh()))
        for sparsity, rounds in ((0.8, 3), (0.95, 5)):
            if ("lth-ticket", sparsity, seed) in done and ("lth-reinit", sparsity, seed) in done:
                continue
            model = fresh()
            find_ticket(model, bundle.train, cfg.replace(epochs=1, seed=seed), sparsity=sparsity, rounds=rounds)
            control = copy.deepcopy(model)
            reinit_(control, seed=seed + 1000)
            record("lth-ticket", sparsity, seed, train_eval(model))
            record("lth-reinit", sparsity, seed, train_eval(control))
        for sparsity in (0.9, 0.95, 0.98):
            for exp in ("snip", "snip-ldi", "random"):
                if (exp, sparsity, seed) in done:
                    continue
                model = fresh()
                calib = bundle.calib(1, batch_size=100)
                if exp == "random":
                    sparsify_(model, sparsity=sparsity, criterion="random", seed=seed)
                else:
                    get_method(exp).run(RunContext(model=model, example_inputs=calib[0][0][:1],
                                                   target=f"sparsity={sparsity}", calib=calib, seed=seed))
                record(exp, sparsity, seed, train_eval(model))
    table = {}
    for (exp, sparsity, _), row in done.items():
        table.setdefault((exp, sparsity), []).append(row["accuracy"])
    for (exp, sparsity), accs in sorted(table.items()):
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"{exp:12s} {sparsity:5.2f}  {100 * statistics.mean(accs):6.2f} ± {100 * sd:4.2f}  (n={len(accs)})")


if __name__ == "__main__":
    main()
