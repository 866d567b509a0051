"""PackNet's entry check: Fashion-MNIST split into two 5-class tasks, packed into one LeNet-300-100 (issue 20).

Task A = classes 0-4, task B = classes 5-9 (labels 0-4 within each task), every training image of the task,
the test images of the task. Rows, all LeNet-300-100 with 5-way heads and SGD (lr 0.1, momentum 0.9, cosine):

- ``packnet``: the ``packnet`` method twice on one :class:`~prunekit.masks.tasks.PackedNetwork`: task A for
  ``--epochs`` epochs, 50% of its weights per layer released, ``--retrain`` epochs of retraining; then task B on
  the freed weights with its own head, the same budget. Task A's logits on its test set are compared
  bit for bit before and after B is packed.
- ``fine-tune``: the same A training (no pruning), then the whole network trained on B with a new head
  (catastrophic forgetting of A shows in A's accuracy through its own head).
- ``separate``: one network per task, each trained ``--epochs + --retrain`` epochs.
- ``joint``: one network with a 10-way head trained on both tasks together for ``2 * (--epochs + --retrain)``
  epochs, scored per task as a 5-way choice among that task's logits.

The retraining lr is 0.01 (``retrain_lr``): the paper's 1e-4 is for fine-tuning an ImageNet network, not for a
net trained from scratch for a few epochs. Results go to ``benchmarks/results/packnet_check.json`` / ``.md``.

Usage: nice python benchmarks/packnet_check.py [--seeds 0] [--epochs 3] [--retrain 1]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import prunekit as pk
from prunekit.data.loader import TensorLoader
from prunekit.masks.tasks import PackedNetwork
from prunekit.methods import RunContext, get_method, load_all
from prunekit.train import TrainConfig, evaluate, fit

OUT = Path(__file__).resolve().parent / "results"


def split(loader, lo, shuffle, seed):
    keep = (loader.targets >= lo) & (loader.targets < lo + 5)
    return TensorLoader(loader.inputs[keep], loader.targets[keep] - lo, batch_size=128, shuffle=shuffle, seed=seed,
                        normalize=loader.normalize)


def lenet(classes, seed):
    torch.manual_seed(seed)
    m = pk.models.create("lenet300")
    m.fc3 = nn.Linear(100, classes)
    return m


def acc(model, data):
    return evaluate(model, data)["accuracy"]


def logits(model, data):
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x) for x, _ in data])


def one_seed(seed, epochs, retrain, b):
    tc = TrainConfig(lr=0.1, progress=False, seed=seed)
    train = {t: split(b.train, lo, True, seed) for t, lo in (("A", 0), ("B", 5))}
    test = {t: split(b.test, lo, False, seed) for t, lo in (("A", 0), ("B", 5))}
    row = {}
    # packnet
    spec = get_method("packnet")
    packed = PackedNetwork(lenet(5, seed), head="fc3")
    tel = {}
    for t in ("A", "B"):
        ctx = RunContext(model=packed, example_inputs=next(iter(test["A"]))[0][:2], target="sparsity=0.5",
                         train_data=train[t], prune_epochs=epochs, train_config=tc, seed=seed,
                         options={"retrain_epochs": retrain, "retrain_lr": 0.01})
        res = spec.run(ctx)
        tel[t] = res.telemetry
        if t == "A":
            packed.task = 1
            a_before = logits(packed, test["A"])
            acc_a_before = acc(packed, test["A"])
    packed.task = 1
    a_after = logits(packed, test["A"])
    row["packnet"] = {"A": acc(packed, test["A"]), "A_before_B": acc_a_before,
                      "A_logits_max_abs_diff": float((a_after - a_before).abs().max()),
                      "B": (setattr(packed, "task", 2), acc(packed, test["B"]))[1], "telemetry": tel}
    n = sum(o.numel() for o in packed.owners.values())
    row["packnet"]["owned"] = {str(k): sum(int((o == k).sum()) for o in packed.owners.values()) / n for k in (0, 1, 2)}
    # fine-tune (catastrophic forgetting)
    net = lenet(5, seed)
    fit(net, train["A"], tc.replace(epochs=epochs + retrain))
    head_a = net.fc3
    a_ft_before = acc(net, test["A"])
    net.fc3 = nn.Linear(100, 5)
    fit(net, train["B"], tc.replace(epochs=epochs + retrain))
    acc_b = acc(net, test["B"])
    net.fc3 = head_a
    row["fine-tune"] = {"A_before_B": a_ft_before, "A": acc(net, test["A"]), "B": acc_b}
    # separate networks
    row["separate"] = {}
    for t in ("A", "B"):
        net = lenet(5, seed)
        fit(net, train[t], tc.replace(epochs=epochs + retrain))
        row["separate"][t] = acc(net, test[t])
    # joint training: one 10-way network on both tasks
    net = lenet(10, seed)
    fit(net, TensorLoader(b.train.inputs, b.train.targets, batch_size=128, shuffle=True, seed=seed,
                          normalize=b.train.normalize), tc.replace(epochs=2 * (epochs + retrain)))
    row["joint"] = {}
    for t, lo in (("A", 0), ("B", 5)):
        out = logits(net, test[t])[:, lo:lo + 5]
        row["joint"][t] = float((out.argmax(1) == test[t].targets).float().mean())
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--retrain", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(1)
    load_all()
    b = pk.data.load("fashion-mnist", batch_size=128, val_fraction=0.0)
    path = OUT / "packnet_check.json"
    done = json.loads(path.read_text()) if path.exists() else {}
    for seed in a.seeds:
        key = f"e{a.epochs}_r{a.retrain}_s{seed}"
        if key in done:
            continue
        t0 = time.time()
        done[key] = {**one_seed(seed, a.epochs, a.retrain, b), "seconds": time.time() - t0}
        path.write_text(json.dumps(done, indent=1))
    rows = [done[f"e{a.epochs}_r{a.retrain}_s{s}"] for s in a.seeds]

    def cell(name, t):
        v = [100 * r[name][t] for r in rows]
        return f"{np.mean(v):.2f} ± {np.std(v):.2f}"

    md = ["# PackNet's entry check: two Fashion-MNIST tasks in one LeNet-300-100", "",
          f"Command: `python benchmarks/packnet_check.py --seeds {' '.join(map(str, a.seeds))} --epochs {a.epochs} "
          f"--retrain {a.retrain}` (task A = classes 0-4, B = 5-9; {a.epochs} epochs per task + {a.retrain} of "
          f"retraining after the 50% cut; test accuracy %, mean ± std over {len(rows)} seed(s)).", "",
          "| row | task A after both tasks | task B | task A before B was added |", "|---|---|---|---|"]
    for name in ("packnet", "fine-tune", "separate", "joint"):
        before = cell(name, "A_before_B") if "A_before_B" in rows[0][name] else "–"
        md.append(f"| {name} | {cell(name, 'A')} | {cell(name, 'B')} | {before} |")
    md += ["", f"PackNet: task A's logits after B was packed differ by at most "
           f"{max(r['packnet']['A_logits_max_abs_diff'] for r in rows):g} (max-abs over A's test set). Share of the "
           f"backbone's weights owned by A / B / free (seed {a.seeds[0]}): "
           + " / ".join(f"{rows[0]['packnet']['owned'][k]:.3f}" for k in ("1", "2", "0")) + "."]
    (OUT / "packnet_check.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
