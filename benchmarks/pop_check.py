"""POP's small-scale check (its entry, scaled to this machine): the partial-order search against exhaustive
search on a grid of small VGGs.

Protocol: small VGGs of three stages (``w``, ``2w``, ``4w`` channels, ``d`` conv3x3-BN-ReLU layers each, a 2x2
max pool between stages, global average pool, one linear layer) for ``w`` in ``--widths`` and ``d`` in
``--depths``; Fashion-MNIST, ``--train`` training images (``--val`` of them held out for scoring), each
candidate built under seed ``--seed`` and trained ``--epochs`` epoch(s) (SGD lr ``--lr``, cosine, batch 64);
CPU latency of a batch of one (one thread, median, or with ``--statistic p10`` the 10th percentile, of 30
forwards; ``--clock cpu``, the default, reads the thread's CPU time: wall time on the shared machine swung by
more than 10x between repeats of the same model). Exhaustive search trains every candidate;
the partial-order search (``prunekit.allocate.pareto.partial_order_search``, order ``cut-first``) is then
replayed on the same accuracies (training is seeded, so a candidate it trains scores what it scored in the
exhaustive run) and trains only the candidates it cannot cut. Reported: both fronts, whether they are the
same set, candidates trained, the pairs where the partial-order assumption failed (a smaller candidate more
accurate than a larger one). Results in ``--out`` (JSON, resumable: a trained candidate is not trained again)
and a Markdown summary beside it.

Usage: nice python benchmarks/pop_check.py [--train 6000 --epochs 1]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import prunekit as pk
from prunekit.allocate.pareto import partial_order_search, pareto_front
from prunekit.methods.pop import family_search
from prunekit.models.cnn import VGG

COMMAND = "nice python benchmarks/pop_check.py"


def builder(w: float, d: int):
    w = int(w)
    return VGG([w] * d + ["M"] + [2 * w] * d + ["M"] + [4 * w] * d, num_classes=10, in_channels=1, input_size=28)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--depths", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--train", type=int, default=6000)
    p.add_argument("--val", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--statistic", choices=["median", "p10"], default="median",
                   help="latency statistic of the 30 timed forwards (p10 is steadier on a busy machine)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="cpu",
                   help="latency clock: the thread's CPU time (default; steady on a busy machine) or wall time")
    p.add_argument("--out", default="benchmarks/results/pop_check.json")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(a.out)
    state = json.loads(out.read_text()) if out.exists() else {}
    b = pk.data.load("fashion-mnist", subset=(a.train, 100), batch_size=64, val_fraction=a.val / a.train, seed=a.seed)
    val = list(b.val)
    config = pk.TrainConfig(epochs=a.epochs, lr=a.lr, scheduler="cosine", progress=False)
    known = {(float(k.split("x")[0]), int(k.split("x")[1])): v for k, v in state.get("accuracy", {}).items()}
    state.setdefault("accuracy", {})
    state.setdefault("train_seconds", {})
    t_start = [time.perf_counter()]

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(state, indent=1))

    def on_trained(i, acc):
        w, d = fs_grid[i]
        key = f"{int(w)}x{d}"
        if key not in state["accuracy"]:
            state["accuracy"][key] = acc
            state["train_seconds"][key] = time.perf_counter() - t_start[0]
            save()
            print(f"trained {key}: val accuracy {acc:.4f} ({state['train_seconds'][key]:.0f} s)", flush=True)
        t_start[0] = time.perf_counter()

    fs_grid = [(float(w), int(d)) for w in sorted(set(a.widths)) for d in sorted(set(a.depths))]
    if "latency_ms" not in state:
        fs = family_search(builder, a.widths, a.depths, example_inputs=b.example_inputs(1), train=[], val=val[:1],
                           config=config, latency_runs=30, order="exhaustive", statistic=a.statistic,
                           clock=a.clock,
                           known={g: 0.0 for g in fs_grid})  # latency only
        state["latency_ms"] = fs.result.latency
        state["grid"] = [list(g) for g in fs.grid]
        save()
    fs = family_search(builder, a.widths, a.depths, example_inputs=b.example_inputs(1), train=b.train, val=val,
                       config=config, seed=a.seed, order="exhaustive", known=known, latency=state["latency_ms"],
                       on_trained=on_trained)
    grid, lat = fs.grid, fs.result.latency
    acc = [fs.result.scores[i] for i in range(len(grid))]
    exhaustive = pareto_front(lat, acc)
    rows = {}
    for order in ("cut-first", "latency"):
        r = partial_order_search(grid, lat, acc.__getitem__, order=order)
        rows[order] = {"trained": len(r.trained), "order": r.trained, "cut": {str(k): v for k, v in r.cut.items()},
                       "front": r.front, "same_front": sorted(r.front) == sorted(exhaustive)}
    viol = [(grid[x], grid[y]) for x, y in fs.result.violations]
    state["summary"] = {"command": COMMAND, "args": vars(a), "exhaustive_front": exhaustive,
                        "exhaustive_trained": len(grid), "pop": rows, "violations": [[list(x), list(y)] for x, y in viol]}
    save()
    cmd = COMMAND + "".join(f" --{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                            for k, v in (("widths", a.widths), ("depths", a.depths), ("seed", a.seed),
                                         ("statistic", a.statistic), ("clock", a.clock), ("out", a.out))
                            if v != p.get_default(k))
    state["summary"]["command"] = cmd
    save()
    lines = [f"# POP check (`{cmd}`)", "", f"{len(grid)} small VGGs, Fashion-MNIST {a.train} training images "
             f"({a.val} held out), {a.epochs} epoch(s), seed {a.seed}, latency {a.statistic} on the {a.clock} clock.", "",
             "| width | depth | latency ms | val accuracy | exhaustive front | POP trained |", "|---|---|---|---|---|---|"]
    pop = rows["cut-first"]
    for i, (w, d) in enumerate(grid):
        lines.append(f"| {int(w)} | {d} | {lat[i]:.3f} | {acc[i]:.4f} | {'yes' if i in exhaustive else ''} | "
                     f"{'yes' if i in pop['order'] else 'cut by ' + str(grid[pop['cut'][str(i)]['by']])} |")
    lines += ["", f"POP (cut-first) trained {pop['trained']} of {len(grid)} "
              f"({1 - pop['trained'] / len(grid):.0%} fewer); same front as exhaustive: {pop['same_front']}; "
              f"assumption violations (smaller more accurate than larger): {len(viol)}"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
