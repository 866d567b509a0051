"""Run by test_distributed.py: the same tiny fit, under torchrun (N processes) or in one process.

Usage: python ddp_worker.py OUT_DIR GLOBAL_BATCH  (under torchrun each rank gets GLOBAL_BATCH / world_size)
"""
import json
import os
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunekit.train import Callback, TrainConfig, fit
from prunekit.train.distributed import shutdown


class CountSamples(Callback):
    def __init__(self):
        self.samples = 0

    def on_batch_start(self, state):
        self.samples += len(state.targets)


def run(out_dir: str, global_batch: int) -> dict:
    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (64,), generator=g)
    x = torch.randn(3, 8, generator=g)[y] * 3 + torch.randn(64, 8, generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    counter = CountSamples()
    cfg = TrainConfig(epochs=2, lr=0.05, scheduler="cosine", progress=False, checkpoint_dir=os.path.join(out_dir, "ck"))
    res = fit(model, DataLoader(TensorDataset(x, y), batch_size=global_batch // world), cfg, callbacks=[counter])
    rank = int(os.environ.get("RANK", "0"))
    torch.save(model.state_dict(), os.path.join(out_dir, f"weights-rank{rank}.pt"))
    # the same run from prunekit's own in-memory loader, sharded by data.load(distributed=True)'s sampler;
    # this fit joins the process group the first fit started
    from prunekit.data import TensorLoader

    torch.manual_seed(0)
    model2 = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    fit(model2, TensorLoader(x, y, batch_size=global_batch // world, distributed=world > 1), cfg.replace(checkpoint_dir=None))
    torch.save(model2.state_dict(), os.path.join(out_dir, f"weights2-rank{rank}.pt"))
    shutdown()  # the documented end of a distributed script
    info = {"rank": rank, "world": world, "samples": counter.samples, "steps": res.steps,
            "train_acc": res.final["train_acc"]}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(info, f)
    return info


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]))
