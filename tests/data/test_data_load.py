import pytest
import torch

import prunekit as pk
from prunekit.errors import ConfigError



def test_synthetic_bundle_shapes_and_splits():
    b = pk.data.load("synthetic", batch_size=16, n_train=100, n_test=30, val_fraction=0.2, shape=(3, 8, 6),
                     num_classes=4)
    assert (b.num_classes, b.in_channels, b.input_size) == (4, 3, (8, 6))
    assert (len(b.train.inputs), len(b.val.inputs), len(b.test.inputs)) == (80, 20, 30)
    assert (len(b.train), len(b.val), len(b.test)) == (5, 1, 1)
    x, y = next(iter(b.train))
    assert x.shape == (16, 3, 8, 6) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert b.example_inputs(3).shape == (3, 3, 8, 6)


def test_deterministic_under_seed_and_different_across_seeds():
    def first_epoch(seed):
        b = pk.data.load("synthetic", n_train=64, batch_size=16, seed=seed)
        return torch.cat([y for _, y in b.train]), torch.cat([x for x, _ in b.train])

    ya, xa = first_epoch(0)
    yb, xb = first_epoch(0)
    yc, _ = first_epoch(1)
    assert ya.tolist() == yb.tolist()
    torch.testing.assert_close(xa, xb)
    assert ya.tolist() != yc.tolist()


def test_calib_is_fixed_unaugmented_and_from_train_split():
    b = pk.data.load("synthetic", n_train=200, batch_size=10, augment="crop+flip")
    c1, c2 = b.calib(3), b.calib(3, batch_size=10)
    assert len(c1) == 3 and all(x.shape == (10, 1, 28, 28) for x, _ in c1)
    for (x1, y1), (x2, y2) in zip(c1, c2):
        torch.testing.assert_close(x1, x2)
        assert y1.tolist() == y2.tolist()
    train = b.train.normalize(b.train.inputs)
    # every calibration input is an exact (un-augmented) training input
    x = c1[0][0]
    hits = (train[None] == x[:, None]).flatten(2).all(-1).any(-1)
    assert hits.all()
    with pytest.raises(ConfigError, match=r"calib\(n_batches=100, batch_size=10\) needs 1000"):
        b.calib(100)


def test_val_and_train_are_disjoint_and_subset_applies():
    b = pk.data.load("synthetic", n_train=100, n_test=50, subset=(40, 20), val_fraction=0.25)
    assert (len(b.train.inputs), len(b.val.inputs), len(b.test.inputs)) == (30, 10, 20)
    tr, va = b.train.inputs.flatten(1), b.val.inputs.flatten(1)
    assert not (tr[:, None] == va[None]).all(-1).any()


def test_synthetic_text_is_next_token_data():
    b = pk.data.load("synthetic-text", vocab_size=16, seq_len=12, n_train=32, n_test=20, batch_size=8)
    x, y = next(iter(b.test))
    assert (b.num_classes, b.in_channels, b.input_size) == (16, 1, 12)
    assert x.dtype == torch.long and x.shape == y.shape == (20, 12)
    assert 0 <= int(x.min()) and int(x.max()) < 16
    assert torch.equal(x[:, 1:], y[:, :-1])


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "fashon-mnist"}, r"unknown dataset name='fashon-mnist'; did you mean 'fashion-mnist'"),
    ({"name": "synthetic", "val_fraction": 1.0}, r"val_fraction=1.0 must be in \[0, 1\)"),
    ({"name": "synthetic", "subset": -3}, r"subset=-3 must be a positive int"),
    ({"name": "synthetic", "n_train": 50, "subset": 60}, r"subset=60 asks for 60 training examples; 'synthetic' has 50"),
    ({"name": "synthetic", "n_test": 10, "subset": (5, 20)}, r"asks for 20 test examples; 'synthetic' has 10"),
    ({"name": "synthetic", "augment": "rotate"}, r"augment='rotate'"),
    ({"name": "synthetic", "colour": True}, r"does not take option\(s\) \['colour'\]"),
    ({"name": "imagefolder"}, r"imagefolder:/path/to/folder"),
    ({"name": "mnist:x"}, r"only 'imagefolder:<path>' and 'text:<corpus>' take"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        pk.data.load(**kwargs)


@pytest.mark.needs_fashion
def test_fashion_mnist_default_split_and_normalisation():
    b = pk.data.load("fashion-mnist", batch_size=128, augment=False)
    assert (len(b.train.inputs), len(b.val.inputs), len(b.test.inputs)) == (54000, 6000, 10000)
    assert (b.num_classes, b.in_channels, b.input_size) == (10, 1, 28)
    assert torch.bincount(b.test.targets).tolist() == [1000] * 10
    x = b.train.normalize(b.train.inputs[:5000])
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05
    assert b.train.transform is None
    assert pk.data.load("fashion-mnist").train.transform.crop_padding == 2
