"""Parameters, MACs and CPU latency of decomposed ResNet-20s against a filter-pruned one at the same MACs.

Issue 19's last bullet: a decomposition (``hinge``: residual convs split by SVD into basis filters + a 1x1
layer; ``filter-basis``: every 3x3 conv as a basis shared by input-channel groups + a 1x1 mix; ``coreset``:
response-norm filter pruning, then a truncated-SVD basis + 1x1 coefficients) trades one conv for two smaller
ones, so its MACs fall without its latency necessarily following. Each row is the structure the method itself
produces on a ResNet-20 for Fashion-MNIST inputs (1 x 28 x 28) at a ``macs=`` target: the methods run on a few
batches of random images (structure only; accuracy is not measured here -- see the fair bench), ``hinge``
with ``prune_epochs=1`` (its proximal steps), the others one-shot. ``l1-filter`` (uniform L1 filter pruning,
the classifier kept) is the pruned model of the same MACs. Latency: batch 1, one intra-op thread, under
``torch.inference_mode``; after a warm-up, every round times one forward of each model in turn (interleaved, so
all see the same background load), and the median over rounds is reported with the median of the per-round
ratio dense / model.

Usage (from the repository root; a smoke run takes about a minute):
    nice -n 15 python benchmarks/decomposition_latency.py --targets 0.5 --runs 50
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import prunekit as pk
from prunekit import workflows as W
from prunekit.methods import RunContext, get_method, load_all

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "decomposition_latency.json"
METHODS = ("l1-filter", "hinge", "filter-basis", "coreset")
COMMAND = "nice -n 15 python benchmarks/decomposition_latency.py"


def build(method: str, target: float, seed: int = 0):
    """ResNet-20 (random weights, seed 0) cut by ``method`` to ``macs=target`` on random batches."""
    torch.manual_seed(0)
    model = W.resolve_model("resnet20", in_channels=1, input_size=28)
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(2)]
    ctx = RunContext(model=model, example_inputs=torch.zeros(1, 1, 28, 28), target=f"macs={target}",
                     train_data=batches, calib=batches, ignore=("fc",), seed=seed,
                     prune_epochs=1 if method == "hinge" else 0,
                     train_config=pk.TrainConfig(lr=0.01, progress=False))
    res = get_method(method).run(ctx)
    return model.eval(), res


def interleaved(models: dict, x, runs: int, warmup: int) -> dict:
    """``{name: (median seconds, median ratio first-model / this)}``, one forward of each model per round."""
    names = list(models)
    times = {n: [] for n in names}
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                for n in names:
                    models[n](x)
            for _ in range(runs):
                for n in names:
                    t0 = time.perf_counter()
                    models[n](x)
                    times[n].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    first = times[names[0]]
    return {n: (statistics.median(t), statistics.median(a / b for a, b in zip(first, t))) for n, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.25])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(1)
    load_all()
    x = torch.zeros(1, 1, 28, 28)
    torch.manual_seed(0)
    dense = W.resolve_model("resnet20", in_channels=1, input_size=28).eval()
    base = pk.measure(dense, x, sizes=False)
    rows = []
    for target in args.targets:
        models, info = {"dense": dense}, {}
        for method in args.methods:
            m, res = build(method, target)
            models[method] = m
            info[method] = {"engaged": res.engaged, "telemetry": res.telemetry}
        lat = interleaved(models, x, args.runs, args.warmup)
        for name, m in models.items():
            ms = pk.measure(m, x, sizes=False)
            rows.append({"target": target, "model": name, "params": ms.params, "macs": ms.macs,
                         "params_kept": ms.params / base.params, "macs_kept": ms.macs / base.macs,
                         "latency_ms": lat[name][0] * 1e3, "speedup": lat[name][1], **info.get(name, {})})
    out = {"command": f"{COMMAND} --targets {' '.join(map(str, args.targets))} --runs {args.runs}",
           "torch": torch.__version__, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))
    head = "| target | model | params | MACs | MACs kept | latency ms (1 thread, batch 1) | speed-up vs dense |"
    print(head + "\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| macs={r['target']} | {r['model']} | {r['params']:,} | {r['macs']:,} | {r['macs_kept']:.3f} | "
              f"{r['latency_ms']:.3f} | {r['speedup']:.2f}x |")


if __name__ == "__main__":
    main()
