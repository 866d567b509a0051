"""DA-NAS's small-scale check (its entry, scaled to this machine): does a 4-class warm-up rank a supernet's
candidate ops as full 10-class training does, at a fraction of the compute?

Protocol: ``prunekit.models.supernet.SuperNet`` (3 choice layers of ``--channels`` channels, 4 candidate ops
each: conv3x3, conv5x5, dilated conv3x3, max-pool + conv1x1), Fashion-MNIST ``--train`` training images,
weights trained through ``fit`` (SGD lr ``--lr``, cosine, batch 64, ``--epochs`` epochs per stage) and the
architecture logits on the same batches by their own Adam (lr 3e-3, ``supernet_search``'s default).
Class difficulty (ours; the paper's measure is not published): the error per class of a
nearest-class-mean classifier on the raw training pixels; the easiest ``--warm`` classes form the warm-up.
Per seed: (ref) 10-class training, candidates ranked by architecture weight; (warm-up) the same supernet and
seed trained on the warm-up classes only, ranked; (progressive) DA-NAS's loop: warm-up classes, keep the top
half of every layer, then all classes, keep the top one. Reported per seed: layers whose top-1 op equals the
reference's, whether the cut after the warm-up kept the reference's top-1 op, and the search compute (images x
MACs of the alive candidates) as a fraction of the reference's.
The entry's assert: the warm-up keeps the reference top-1 op in >= 2 of 3 layers at <= 50% of the compute.
Results in ``--out`` (JSON, one entry per finished seed: resumable) and a Markdown summary beside it.

Usage: nice python benchmarks/danas_check.py [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import prunekit as pk
from prunekit.allocate.progressive import class_curriculum
from prunekit.methods.da_nas import supernet_search
from prunekit.models.supernet import OPS, SuperNet

COMMAND = "nice python benchmarks/danas_check.py"


def ncm_error(batches, n_classes=10) -> list:
    """Per-class error of the nearest class mean on raw pixels (the class-difficulty measure of this check)."""
    x = torch.cat([b[0].flatten(1) for b in batches])
    y = torch.cat([b[1] for b in batches])
    means = torch.stack([x[y == c].mean(0) for c in range(n_classes)])
    pred = torch.cdist(x, means).argmin(1)
    return [float((pred[y == c] != c).float().mean()) for c in range(n_classes)]


def top1(probs_last) -> list:
    return [max(range(len(p)), key=lambda i: p[i]) for p in probs_last]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=int, default=6000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--warm", type=int, default=4)
    p.add_argument("--channels", type=int, nargs=3, default=[8, 16, 32])
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="benchmarks/results/danas_check.json")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(a.out)
    state = json.loads(out.read_text()) if out.exists() else {"seeds": {}}
    b = pk.data.load("fashion-mnist", subset=(a.train, 100), batch_size=64, val_fraction=0.0, seed=0, augment=False)
    train = list(b.train)
    difficulty = ncm_error(train)
    warm, full = class_curriculum(difficulty, [a.warm, 10])
    state.update(command=COMMAND, args=vars(a), class_error=difficulty, warm_classes=warm)
    for seed in a.seeds:
        if str(seed) in state["seeds"]:
            continue
        cfg = pk.TrainConfig(epochs=a.epochs, lr=a.lr, scheduler="cosine", progress=False, seed=seed)
        runs = {}
        for name, stages, keep, final in (("ref", [full], 1.0, None), ("warmup", [warm], 1.0, None),
                                          ("progressive", [warm, full], 0.5, 1)):
            torch.manual_seed(seed)
            net = SuperNet(a.channels)
            r = supernet_search(net, train, stages, epochs=a.epochs, keep=keep, final_keep=final, config=cfg)
            runs[name] = {"top1": top1(r["probabilities"][-1]) if final is None else [x[0] for x in r["alive"]],
                          "probabilities": r["probabilities"], "macs": r["macs"], "alive": r["alive"]}
            print(seed, name, runs[name]["top1"], r["macs"], flush=True)
        ref = runs["ref"]
        for name in ("warmup", "progressive"):
            runs[name]["same_top1_layers"] = sum(x == y for x, y in zip(runs[name]["top1"], ref["top1"]))
            runs[name]["compute_fraction"] = runs[name]["macs"] / ref["macs"]
        state["seeds"][str(seed)] = runs
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(state, indent=1))
    names = list(OPS)
    lines = [f"# DA-NAS check (`{COMMAND}`)", "", f"SuperNet {a.channels}, Fashion-MNIST {a.train} images, "
             f"{a.epochs} epoch(s) per stage; warm-up classes (easiest by nearest-class-mean error): {warm}.", "",
             "| seed | reference top-1 | warm-up top-1 | same (of 3) | compute | reference top-1 kept by the warm-up cut "
             "(of 3) | progressive top-1 | same | compute |",
             "|---|---|---|---|---|---|---|---|---|"]
    for seed, runs in sorted(state["seeds"].items()):
        w, pr = runs["warmup"], runs["progressive"]
        # the progressive loop's cut after the warm-up stage: did it keep the reference's top-1 op of each layer?
        cut = [sorted(range(len(p)), key=lambda i: (-p[i], i))[:max(1, len(p) // 2)]
               for p in pr["probabilities"][0]]
        pr["ref_top1_kept_layers"] = sum(r in c for r, c in zip(runs["ref"]["top1"], cut))
        lines.append(f"| {seed} | {[names[i] for i in runs['ref']['top1']]} | {[names[i] for i in w['top1']]} | "
                     f"{w['same_top1_layers']} | {w['compute_fraction']:.2f} | {pr['ref_top1_kept_layers']} | "
                     f"{[names[i] for i in pr['top1']]} | "
                     f"{pr['same_top1_layers']} | {pr['compute_fraction']:.2f} |")
    out.write_text(json.dumps(state, indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
