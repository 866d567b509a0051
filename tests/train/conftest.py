"""Tiny models and data shared by the training tests (fast on one CPU thread)."""
import pytest
import torch
from torch import nn


def tiny_mlp(seed: int = 0, *, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 3))


def blobs(n: int = 96, seed: int = 0):
    """Three Gaussian blobs in 8-D: separable, so a few epochs reach high accuracy."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centers = torch.randn(3, 8, generator=g) * 3
    x = centers[y] + torch.randn(n, 8, generator=g)
    return x, y


def loader(x, y, batch_size=16, shuffle=False, seed=None):
    from torch.utils.data import DataLoader, TensorDataset

    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)


@pytest.fixture
def data():
    return blobs()


@pytest.fixture
def make_mlp():
    return tiny_mlp


@pytest.fixture
def make_loader():
    return loader
