"""Does a training-time regulariser act at the benchmark's budget? One epoch of it on filter_full.yaml's protocol.

The shipped ResNet-20 (Fashion-MNIST), the 4,500-image training subset of ``subset: 5000`` (seed 0), batches of
128, 1 epoch at lr 0.01 (cosine, momentum 0.9, weight decay 5e-4): 36 steps, as a bench cell's ``prune_epochs``.
Prints, per strength, what the mechanism did before any cut:

    python benchmarks/engagement_sweep.py ista 0.005 0.5 1 2     # bn-ista rho: fraction of BN scales exactly 0
    python benchmarks/engagement_sweep.py sss 0.01 0.4 0.55 0.6  # sss strength: fraction of gates exactly 0
    python benchmarks/engagement_sweep.py slim 0.0001 0.2 0.5    # slimming s: fraction of |gamma| below 1e-2

About 1-3 minutes per value on one CPU core.
"""
import copy
import sys
import time

import torch

import prunekit as pk
from prunekit import workflows as W
from prunekit.methods._filter_common import ChannelGates, bn_layers
from prunekit.methods._regularizers import APGGates, BNScaleL1
from prunekit.methods.bn_ista import ista_callbacks


def main(which: str, values: list[float]) -> None:
    torch.set_num_threads(1)
    base = W._load_baseline("baselines/resnet20-fashion-mnist.safetensors")[0]
    data = pk.data.load("fashion-mnist", batch_size=128, subset=5000, seed=0)
    cfg = pk.TrainConfig(epochs=1, lr=0.01, seed=0, progress=False)
    x = data.example_inputs(2)
    print(f"{len(data.train)} steps per epoch")
    for v in values:
        model = copy.deepcopy(base).train()
        torch.manual_seed(0)
        t0 = time.time()
        if which == "ista":
            cbs = ista_callbacks(model, x, rho=v)
            pk.fit(model, data.train, cfg, callbacks=cbs)
            g = torch.cat([bn.weight.detach().abs() for _, bn in bn_layers(model)])
            shown = f"zero {float((g == 0).float().mean()):.4f}  min |gamma| {float(g.min()):.4f}"
        elif which == "sss":
            gates = ChannelGates(model, [f for f, _ in bn_layers(model)])
            pk.fit(model, data.train, cfg, callbacks=[APGGates(gates, v)])
            g = torch.cat([t.detach() for t in gates.gates.values()])
            shown = (f"zero {float((g == 0).float().mean()):.4f}  min {float(g.min()):.4f}  "
                     f"median {float(g.median()):.4f}")
        elif which == "slim":
            pk.fit(model, data.train, cfg, callbacks=[BNScaleL1([bn for _, bn in bn_layers(model)], v)])
            g = torch.cat([bn.weight.detach().abs() for _, bn in bn_layers(model)])
            shown = f"below 1e-2 {float((g < 1e-2).float().mean()):.4f}  min |gamma| {float(g.min()):.4f}"
        else:
            raise SystemExit(f"unknown regulariser {which!r}; choose ista, sss or slim")
        print(f"{which} {v}: {shown}  ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], [float(v) for v in sys.argv[2:]])
