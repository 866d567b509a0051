"""DMCP's entry check, scaled to one CPU core (issue 18): ResNet-20 on a Fashion-MNIST subset, target macs=0.5.

The entry: groups of 10% width, stage 1 = 3 epochs of sandwich training, stage 2 = 2 epochs with the FLOPs
loss; (a) expected FLOPs after stage 2 within +-5% of the target; (b) marginals non-increasing along each chain
and final widths on the grid. Scaled: ``--train`` training images (default 640 of 60,000, batches of
``--batch`` 32: 20 DMCP steps per epoch), ``--epochs 5`` (``stage1_share`` 0.6: 3 + 2), seeds ``--seeds``.
Check (c) (retrained searched net vs uniform widths) is not run here. Each row also reports the cut supernet's
test accuracy (2,000 test images) with ``reinit=False`` and 5 BN recalibration batches, no fine-tune.

Usage: nice python benchmarks/dmcp_check.py [--seeds 0 1 2] [--train 640] [--batch 32] [--epochs 5]
Results: benchmarks/results/dmcp_check.json (one row per seed; an existing row is not rerun) and .md.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import prunekit as pk
from prunekit import workflows as W
from prunekit.methods import RunContext, get_method, load_all
from prunekit.train import TrainConfig, evaluate

OUT = Path(__file__).resolve().parent / "results"


def one(seed: int, n_train: int, epochs: int, target: float, batch: int) -> dict:
    torch.manual_seed(seed)
    b = pk.data.load("fashion-mnist", subset=(n_train, 2000), batch_size=batch, val_fraction=0.0, seed=seed,
                     augment=False)
    model = W.resolve_model("resnet20", in_channels=1, input_size=28)
    ctx = RunContext(model=model, example_inputs=next(iter(b.train))[0][:2], target=f"macs={target}",
                     train_data=b.train, prune_epochs=epochs, seed=seed,
                     train_config=TrainConfig(lr=0.05, progress=False),
                     options={"reinit": False, "recal_batches": 5})
    t0 = time.time()
    res = get_method("dmcp").run(ctx)
    marg = res.info["marginals"]
    return {"seed": seed, "train_images": n_train, "epochs": epochs, "target": target, "batch": batch,
            "telemetry": res.telemetry, "engaged": res.engaged, "widths": res.info["widths"],
            "expected_within_5pct": abs(res.telemetry["expected_cost"] - target) <= 0.05 * target,
            "marginals_non_increasing": all(all(a >= b for a, b in zip(m, m[1:])) for m in marg.values()),
            "acc_after_cut_recal": evaluate(model, b.test)["accuracy"], "seconds": time.time() - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train", type=int, default=640)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--target", type=float, default=0.5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    load_all()
    OUT.mkdir(exist_ok=True)
    path = OUT / "dmcp_check.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    for seed in a.seeds:
        if any(r["seed"] == seed and r["train_images"] == a.train and r["epochs"] == a.epochs for r in rows):
            continue
        rows.append(one(seed, a.train, a.epochs, a.target, a.batch))
        path.write_text(json.dumps(rows, indent=1))
    lines = ["| seed | images | alpha steps | expected MACs after stage 2 | within ±5% | marginals non-increasing | "
             "cut MACs | grid steps to target | entropy start → end | acc after cut (BN recal) | s |", "|" + "---|" * 11]
    for r in rows:
        t = r["telemetry"]
        lines.append(f"| {r['seed']} | {r['train_images']} | {t['alpha_steps']} | {t['expected_cost']:.4f} | "
                     f"{r['expected_within_5pct']} | "
                     f"{r['marginals_non_increasing']} | {t['cut_cost']:.4f} | {t['steps_to_target']} | "
                     f"{t['entropy_start']:.3f} → {t['entropy_end']:.3f} | {100 * r['acc_after_cut_recal']:.2f} | "
                     f"{r['seconds']:.0f} |")
    (OUT / "dmcp_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
