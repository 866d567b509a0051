import pytest
import torch

import prunekit as pk
from prunekit.data import per_class_batches
from prunekit.errors import ConfigError


def test_per_class_batches_keep_the_first_n_of_every_class_in_order():
    x = torch.arange(10.0).view(10, 1)
    y = torch.tensor([0, 1, 1, 0, 2, 1, 0, 0, 2, 2])
    out = per_class_batches([(x[:5], y[:5]), (x[5:], y[5:])], 2, batch_size=4)
    xs, ys = torch.cat([b[0] for b in out]), torch.cat([b[1] for b in out])
    assert xs.flatten().tolist() == [0, 1, 2, 3, 4, 8] and ys.tolist() == [0, 1, 1, 0, 2, 2]
    assert [len(b[1]) for b in out] == [4, 2]
    with pytest.raises(ConfigError, match="n=0"):
        per_class_batches([(x, y)], 0)
    with pytest.raises(ConfigError, match="labels"):
        per_class_batches([(x, None)], 1)


def test_bundle_per_class_is_seeded_and_balanced():
    b = pk.data.load("synthetic", batch_size=16, n_train=200, n_test=20, num_classes=4, val_fraction=0.0)
    first, again = b.per_class(3), b.per_class(3)
    ys = torch.cat([y for _, y in first])
    assert torch.bincount(ys).tolist() == [3, 3, 3, 3]
    assert all(torch.equal(a[0], c[0]) for a, c in zip(first, again))
