"""Evidence for the mask mechanism: training-step overhead and what each mechanism does to a model.

Compares, on an MLP (784-1024-1024-10, the size where masking costs show) and LeNet-300-100, one plain
user training loop (SGD, momentum 0.9, weight decay 5e-4, optimizer built *before* pruning):
  dense             no masks
  prunekit          pk.sparsify_ (forward pre-hook + grad hook + global optimizer step hook)
  torch-prune       torch.nn.utils.prune.l1_unstructured (weight_orig + weight_mask, forward pre-hook)
  parametrize       torch.nn.utils.parametrize with a mask-multiplying parametrization
and reports ms per step (fastest of 7 interleaved repeats of 20 steps), the overhead vs dense, the state_dict keys,
and whether pruned weights are exactly zero in the stored weights after the loop.

Usage: python benchmarks/weight_mechanism.py [--threads 1] [--out runs/weight_mechanism.json]
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn


def make(sizes):
    layers = [nn.Flatten()]
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class MaskParam(nn.Module):
    def __init__(self, mask):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w):
        return w * self.mask


def setup(kind, sizes, sparsity=0.9):
    import prunekit as pk

    torch.manual_seed(0)
    model = make(sizes)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(128, sizes[0]), torch.randint(0, sizes[-1], (128,))
    for _ in range(2):  # momentum exists before pruning
        opt.zero_grad(); nn.functional.cross_entropy(model(x), y).backward(); opt.step()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    if kind == "prunekit":
        pk.sparsify_(model, sparsity=sparsity)
    elif kind == "torch-prune":
        import torch.nn.utils.prune as tp
        for m in linears:
            tp.l1_unstructured(m, "weight", amount=sparsity)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)  # params renamed
    elif kind == "parametrize":
        import torch.nn.utils.parametrize as P
        for m in linears:
            k = round(sparsity * m.weight.numel())
            thr = m.weight.detach().abs().flatten().kthvalue(k).values
            P.register_parametrization(m, "weight", MaskParam((m.weight.detach().abs() > thr).float()))
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    return model, opt, x, y, linears


def _stored_zero(kind, model, linears):
    if kind == "prunekit":
        from prunekit.masks import get_masks
        return all(bool((model.get_parameter(k).detach()[~m] == 0).all()) for k, m in get_masks(model).items())
    if kind == "torch-prune":
        return all(bool((m.weight_orig.detach()[m.weight_mask == 0] == 0).all()) for m in linears)
    if kind == "parametrize":
        return all(bool((m.parametrizations.weight.original.detach()[m.parametrizations.weight[0].mask == 0] == 0)
                        .all()) for m in linears)
    return None


def compare(sizes, kinds, steps=20, repeats=7):
    """Interleave the mechanisms (kind by kind inside each repeat) and keep each one's fastest repeat,
    so that load from other processes on a shared machine affects all of them alike."""
    setups = {k: setup(k, sizes) for k in kinds}
    best = {k: float("inf") for k in kinds}
    for r in range(repeats + 1):
        for kind, (model, opt, x, y, linears) in setups.items():
            t = time.perf_counter()
            for _ in range(steps):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
            if r:  # the first round is warm-up
                best[kind] = min(best[kind], (time.perf_counter() - t) / steps * 1e3)
    return {k: {"ms_per_step": best[k], "state_dict_keys": sorted(setups[k][0].state_dict()),
                "stored_pruned_zero": _stored_zero(k, setups[k][0], setups[k][4])} for k in kinds}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/weight_mechanism.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for name, sizes in {"lenet300": [784, 300, 100, 10], "mlp-1024": [784, 1024, 1024, 10]}.items():
        rows = compare(sizes, ("dense", "prunekit", "torch-prune", "parametrize"))
        base = rows["dense"]["ms_per_step"]
        for r in rows.values():
            r["overhead"] = r["ms_per_step"] / base - 1
        results[name] = rows
    with open(args.out, "w") as f:
        json.dump({"threads": args.threads, "torch": torch.__version__, "results": results}, f, indent=1)
    for name, rows in results.items():
        for kind, r in rows.items():
            print(f"{name:9s} {kind:12s} {r['ms_per_step']:7.2f} ms  overhead {r['overhead']:+.1%}  "
                  f"stored-zero={r['stored_pruned_zero']}  keys={len(r['state_dict_keys'])}")


if __name__ == "__main__":
    main()
