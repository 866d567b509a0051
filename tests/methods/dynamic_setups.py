"""A tiny conv chain and data for the dynamic-pruning tests (fbs, dsg, rnp)."""
import torch
from torch import nn

from prunekit.methods import RunContext, get_method, load_all


def chain_net(seed: int = 0) -> nn.Sequential:
    """conv(1->4)-BN-ReLU, conv(4->8)-BN-ReLU, conv(8->8)-BN-ReLU, pool, linear(8->3), on 6x6 images."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


def batches(n: int, seed: int = 0):
    """``n`` batches of 16 random 1x6x6 images whose label is the tercile of the image mean (learnable)."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(16, 1, 6, 6, generator=g) for _ in range(n)]
    return [(x, torch.bucketize(x.mean((1, 2, 3)), torch.tensor([-0.07, 0.07]))) for x in xs]


def run(mid: str, target: str = "macs=0.6", epochs: int = 1, model=None, **options):
    load_all()
    data = batches(6)
    ctx = RunContext(model=model if model is not None else chain_net(), example_inputs=data[0][0][:1],
                     target=target, train_data=data[:4], calib=data[4:5], val_data=data[5:], prune_epochs=epochs,
                     options=options)
    return get_method(mid).run(ctx), ctx
