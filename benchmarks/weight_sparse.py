"""Sparse vs dense CPU inference: latency and weight memory of real CSR / BSR layers (prunekit.masks.sparse).

For LeNet-300-100, LeNet-5 and a larger MLP (784-4096-4096-10), magnitude-pruned to 50-98% sparsity and
finalized, measures batch-1 and batch-64 latency (median of `--repeats` timed runs after warm-up, one
thread) of the dense model, the CSR model and (for block-pruned weights, pattern block:4x4) the BSR model,
plus the bytes held by the weights (values + indices) and the size of the compact file (save_sparse).

With ``--paired`` each sparse model is timed alternately with its dense twin and the fastest run of each is
kept (robust to load from other processes); the speed-up then uses that paired dense time.

Usage: python benchmarks/weight_sparse.py [--out runs/weight_sparse.json] [--threads 1] [--repeats 30] [--paired]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time

import torch
from torch import nn


def latency_ms(model, x, repeats):
    with torch.inference_mode():
        for _ in range(5):
            model(x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def paired_ms(dense, sparse, x, repeats, rounds=5):
    """Fastest forward of each model over ``rounds`` alternating blocks of ``repeats // rounds`` runs: the
    two models see the same background load, and the minimum discards the interrupted runs."""
    best = [float("inf"), float("inf")]
    with torch.inference_mode():
        for m in (dense, sparse):
            for _ in range(3):
                m(x)
        for _ in range(rounds):
            for i, m in enumerate((dense, sparse)):
                for _ in range(max(1, repeats // rounds)):
                    t = time.perf_counter()
                    m(x)
                    best[i] = min(best[i], (time.perf_counter() - t) * 1e3)
    return best


def weight_bytes(model):
    from prunekit.masks.sparse import sparse_bytes

    return sum(sparse_bytes(m.weight) for m in model.modules() if hasattr(m, "weight") and isinstance(m.weight, torch.Tensor))


def main():
    import prunekit as pk
    from prunekit.masks.sparse import save_sparse, to_sparse_

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/weight_sparse.json")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--paired", action="store_true", help="time dense and sparse alternately, keep the minimum")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = {
        "lenet300": lambda: pk.models.create("lenet300", num_classes=10, in_channels=1, input_size=28),
        "lenet5": lambda: pk.models.create("lenet5", num_classes=10, in_channels=1, input_size=28),
        "mlp-4096": lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 4096), nn.ReLU(), nn.Linear(4096, 4096),
                                          nn.ReLU(), nn.Linear(4096, 10)),
    }
    rows = []
    for name, make in models.items():
        torch.manual_seed(0)
        base = make().eval()
        for batch in (1, 64):
            x = torch.randn(batch, 1, 28, 28)
            dense_ms = latency_ms(base, x, args.repeats)
            rows.append({"model": name, "batch": batch, "sparsity": 0.0, "format": "dense", "ms": dense_ms,
                         "weight_bytes": weight_bytes(base)})
            for sparsity in (0.5, 0.7, 0.9, 0.95, 0.98):
                for fmt, pattern in (("csr", "element"), ("bsr", "block:4x4")):
                    m = copy.deepcopy(base)
                    ignore = []
                    if pattern != "element":  # layers whose [out, in*kh*kw] view does not tile into 4x4 stay dense
                        ignore = [f.rpartition(".")[0] for f, p in pk.masks.prunable_weights(m).items()
                                  if p.shape[0] % 4 or p[0].numel() % 4]
                    pk.sparsify_(m, sparsity=sparsity, pattern=pattern, ignore=ignore)
                    pk.finalize_(m)
                    ref = m(x)
                    rep = to_sparse_(m, layout=fmt, blocksize=(4, 4), min_sparsity=0.3)
                    torch.testing.assert_close(m(x), ref, atol=1e-4, rtol=1e-3)
                    d_ms, ms = paired_ms(base, m, x, args.repeats) if args.paired else (dense_ms,
                                                                                         latency_ms(m, x, args.repeats))
                    rows.append({"model": name, "batch": batch, "sparsity": sparsity, "format": fmt, "ms": ms,
                                 "dense_ms": d_ms, "speedup": d_ms / ms, "weight_bytes": weight_bytes(m),
                                 "converted": sorted(rep["converted"])})
    for name, make in models.items():  # compact files
        torch.manual_seed(0)
        for sparsity in (0.9, 0.95, 0.98):
            m = make().eval()
            pk.sparsify_(m, sparsity=sparsity)
            pk.finalize_(m)
            with tempfile.TemporaryDirectory() as d:
                from safetensors.torch import save_file
                save_file({k: v.contiguous() for k, v in m.state_dict().items()}, f"{d}/dense.safetensors")
                dense_file = os.path.getsize(f"{d}/dense.safetensors")
                sparse_file = save_sparse(m, f"{d}/sparse.safetensors")
            rows.append({"model": name, "sparsity": sparsity, "format": "file", "dense_file_bytes": dense_file,
                         "sparse_file_bytes": sparse_file, "ratio": dense_file / sparse_file})
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"threads": args.threads, "torch": torch.__version__, "rows": rows}, f, indent=1)
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
