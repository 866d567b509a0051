"""DHP's small-scale check (its entry, scaled to this machine's one loaded core).

Protocol: Fashion-MNIST, ``--train`` training images, ``--test`` test images, batch 128, SGD (lr ``--lr``,
momentum 0.9, weight decay 5e-4, cosine), model ``--model`` built from scratch. (i) DHP through
``prunekit.methods`` (``get_method("dhp").run``): the hypernetwork net searches for at most ``--search-epochs``
epochs with ``gamma=--gamma`` until the FLOPs ratio is at most target + 0.01, then it is switched to the compact
net; (ii) the compact net is trained ``--converge-epochs`` epochs ("converging stage"); (iii) the unpruned
model, from the same initial seed, is trained for the same total epochs (the search epochs DHP used, rounded
up, plus the converging epochs). Checks of the entry: (a) searching stops with the FLOPs ratio in
[0.45, 0.55] within ``--search-epochs`` epochs; (b) the compact net reproduces the hypernetwork net's logits at
the switch (max abs diff < 1e-4, from the method's telemetry); (c) after the converging epochs the accuracy is
within 2 points of the unpruned net. One JSON line per stage in ``--out`` (resumable), a Markdown summary beside.

Usage: nice python benchmarks/dhp_check.py [--model vgg-small --gamma 0.05 --search-epochs 10]
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import prunekit as pk
from prunekit.data import first_examples
from prunekit.graph import build_graph
from prunekit.methods import RunContext, get_method, load_all

COMMAND = "nice python benchmarks/dhp_check.py"


def _model(a):
    torch.manual_seed(a.seed)
    kw = {"width": a.width} if a.model == "vgg-small" else {}
    return pk.models.create(a.model, **kw)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vgg-small")
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--target", default="macs=0.5")
    ap.add_argument("--gamma", type=float, default=0.05)
    ap.add_argument("--search-epochs", type=int, default=10)
    ap.add_argument("--converge-epochs", type=int, default=3)
    ap.add_argument("--train", type=int, default=6000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/dhp_check.jsonl")
    a = ap.parse_args()
    torch.set_num_threads(1)
    load_all()
    data = pk.data.load("fashion-mnist", batch_size=128, subset=(a.train, a.test), seed=a.seed, val_fraction=0.0)
    train, test = list(data.train), first_examples(data.test, a.test)
    x = data.example_inputs(2)
    out = Path(a.out)
    rows = {json.loads(l)["stage"]: json.loads(l) for l in out.read_text().splitlines()} if out.exists() else {}

    def save(row):
        rows[row["stage"]] = row
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")

    cfg = pk.TrainConfig(lr=a.lr, progress=False, seed=a.seed)
    settings = {k: getattr(a, k) for k in ("model", "width", "target", "gamma", "search_epochs", "converge_epochs",
                                            "train", "test", "lr", "seed")}
    if "dhp" not in rows:
        model = _model(a)
        dense = build_graph(model, x).macs()
        t0 = time.time()
        ctx = RunContext(model=model, example_inputs=x, target=a.target, train_data=train, seed=a.seed,
                         prune_epochs=a.search_epochs, train_config=cfg.replace(epochs=a.search_epochs),
                         options={"gamma": a.gamma})
        res = get_method("dhp").run(ctx)
        search_s = time.time() - t0
        acc_switch = pk.evaluate(model, test)["accuracy"]
        t0 = time.time()
        pk.fit(model, train, cfg.replace(epochs=a.converge_epochs))
        steps = res.telemetry["search_steps"]
        save({"stage": "dhp", **settings, "telemetry": res.telemetry, "engaged": res.engaged,
              "macs_kept": build_graph(model, x).macs() / dense, "search_epochs_used": steps / len(train),
              "acc_at_switch": acc_switch, "acc": pk.evaluate(model, test)["accuracy"],
              "seconds": {"search": search_s, "converge": time.time() - t0}, "command": COMMAND})
    used = math.ceil(rows["dhp"]["search_epochs_used"] - 1e-9)
    if "unpruned" not in rows:
        model = _model(a)
        t0 = time.time()
        pk.fit(model, train, cfg.replace(epochs=used + a.converge_epochs))
        save({"stage": "unpruned", **settings, "epochs": used + a.converge_epochs,
              "acc": pk.evaluate(model, test)["accuracy"], "seconds": time.time() - t0, "command": COMMAND})
    d, u = rows["dhp"], rows["unpruned"]
    t = d["telemetry"]
    checks = {"a_ratio_in_window_within_epochs": (0.45 <= t["macs_at_stop"] <= 0.55 and t["stopped_at"] is not None),
              "b_switch_exact": t["switch_max_abs_diff"] < 1e-4,
              "c_within_2pt_of_unpruned": d["acc"] >= u["acc"] - 0.02}
    md = [f"# DHP small-scale check ({a.model}, Fashion-MNIST {a.train} train / {a.test} test images)", "",
          f"Command: `{COMMAND} --model {a.model} --width {a.width} --gamma {a.gamma} --search-epochs "
          f"{a.search_epochs} --train {a.train}`", "",
          "| run | epochs | MACs kept | acc at switch | acc | telemetry |", "|---|---|---|---|---|---|",
          f"| DHP (search + converge) | {d['search_epochs_used']:.2f} + {a.converge_epochs} | {d['macs_kept']:.3f} | "
          f"{100 * d['acc_at_switch']:.2f} | {100 * d['acc']:.2f} | zeroed {t['zeroed']}, latent-pruned "
          f"{t['latent_pruned']}, topped up {t['topped_up']}, ratio at stop {t['macs_at_stop']:.3f}, stopped at step "
          f"{t['stopped_at']}, switch diff {t['switch_max_abs_diff']:.1e} |",
          f"| unpruned, same total epochs | {u['epochs']} | 1.000 | - | {100 * u['acc']:.2f} | - |", "",
          "Checks: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items())]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
