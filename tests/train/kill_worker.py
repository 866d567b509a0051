"""Run by test_checkpoint.py: trains with a checkpoint every step and hangs at step K until killed.

Usage: python kill_worker.py CHECKPOINT_DIR K MARKER_FILE
"""
import sys
import time

import torch
from torch import nn


def make():
    """The model, data and config shared with the test's uninterrupted and resumed runs."""
    from prunekit.train import TrainConfig

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (96,), generator=g)
    x = torch.randn(3, 8, generator=g)[y] * 3 + torch.randn(96, 8, generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True)
    cfg = TrainConfig(epochs=3, lr=0.05, progress=False, checkpoint_every=1)
    return model, loader, cfg


if __name__ == "__main__":
    from prunekit.train import Callback, fit

    ckpt_dir, k, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3]

    class Hang(Callback):
        def on_after_step(self, state):
            if state.step == k:
                open(marker, "w").close()
                time.sleep(600)  # the test kills the process here (SIGKILL)

    torch.set_num_threads(1)
    model, loader, cfg = make()
    fit(model, loader, cfg.replace(checkpoint_dir=ckpt_dir), callbacks=[Hang()])
