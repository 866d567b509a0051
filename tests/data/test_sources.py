import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

import prunekit as pk
from prunekit.data.sources import read_cifar, read_idx
from prunekit.errors import DataError


def _write_idx(path, array):
    codes = {np.uint8: 0x08}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def _fake_mnist(folder, n_train=30, n_test=10, gz=True):
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    data = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, (n_train,), dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, (n_test,), dtype=np.uint8),
    }
    for stem, a in data.items():
        _write_idx(folder / (stem + ext), a)
    return data


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_roundtrip(tmp_path, gz):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / ("a-idx3-ubyte" + (".gz" if gz else ""))
    _write_idx(p, a)
    np.testing.assert_array_equal(read_idx(p), a)


def test_truncated_idx_is_a_data_error(tmp_path):
    p = tmp_path / "x-idx1-ubyte"
    p.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 5) + bytes(3))
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(p)
    p.write_bytes(b"PK\x03\x04junk")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(p)


def test_mnist_from_data_dir(tmp_path):
    raw = _fake_mnist(tmp_path, gz=False)
    b = pk.data.load("mnist", data_dir=tmp_path, val_fraction=0.2, batch_size=8, augment=False)
    assert (len(b.train.inputs), len(b.val.inputs), len(b.test.inputs)) == (24, 6, 10)
    assert b.train.inputs.dtype == torch.uint8
    # the test split is the t10k files, in order, normalised with MNIST's mean/std
    x, y = next(iter(b.test))
    assert y.tolist() == raw["t10k-labels-idx1-ubyte"].tolist()
    want = (torch.from_numpy(raw["t10k-images-idx3-ubyte"]).float() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(x[:, 0], want)


def test_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match=r"(?s)lacks train-images-idx3-ubyte.*apt-get install dataset-fashion-mnist.*data_dir"):
        pk.data.load("fashion-mnist", data_dir=tmp_path)
    with pytest.raises(DataError, match=r"data_dir='.*nope' is not a folder"):
        pk.data.load("fashion-mnist", data_dir=tmp_path / "nope")
    with pytest.raises(DataError, match=r"(?s)CIFAR-10 not found.*cifar-10-python.tar.gz.*data_dir"):
        pk.data.load("cifar10", data_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def _fake_cifar10(tmp_path, n=4):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    written = {}
    for f in files:
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n).tolist()),
             b"batch_label": f.encode()}
        written[f] = d
        (folder / f).write_bytes(pickle.dumps(d, protocol=2))
    return written


def test_cifar10_batches(tmp_path):
    written = _fake_cifar10(tmp_path)
    raw = read_cifar(10, str(tmp_path))
    assert raw.train_x.shape == (20, 3, 32, 32) and raw.test_x.shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(raw.train_x[:4].reshape(4, -1).numpy(), written["data_batch_1"][b"data"])
    assert raw.test_y.tolist() == written["test_batch"][b"labels"]
    b = pk.data.load("cifar10", data_dir=tmp_path, val_fraction=0.0, batch_size=4)
    assert (b.num_classes, b.in_channels, b.input_size, b.val) == (10, 3, 32, None)
    assert b.train.transform.crop_padding == 4 and b.train.transform.flip


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo owned",))


def test_cifar_loader_refuses_arbitrary_pickles(tmp_path):
    _fake_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": _Evil()}))
    with pytest.raises(DataError, match=r"refusing to load (posix|os|nt)\.system"):
        read_cifar(10, str(tmp_path))


def test_imagefolder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    b = pk.data.load(f"imagefolder:{tmp_path}", image_size=8, val_fraction=0.0, batch_size=4)
    assert b.classes == ("cat", "dog") and b.num_classes == 2
    assert (len(b.train.inputs), len(b.test.inputs)) == (8, 2)
    assert b.train.inputs.shape[1:] == (3, 8, 8) and b.input_size == 8
    with pytest.raises(DataError, match="no images found"):
        pk.data.load(f"imagefolder:{tmp_path / 'cat'}")


def test_imagefolder_with_train_and_test_folders(tmp_path):
    from PIL import Image

    for split, n in (("train", 3), ("test", 2)):
        for c, value in (("a", 0), ("b", 255)):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((4, 4), value, dtype=np.uint8)).save(tmp_path / split / c / f"{i}.png")
    b = pk.data.load(f"imagefolder:{tmp_path}", image_size=4, grayscale=True, val_fraction=0.0, augment=False)
    assert (len(b.train.inputs), len(b.test.inputs), b.in_channels) == (6, 4, 1)
    assert b.test.targets.tolist() == [0, 0, 1, 1]
    # the image of class b is white: 255 everywhere; the training mean is 0.5
    assert b.test.inputs[2].unique().tolist() == [255]
    x, _ = next(iter(b.test))
    assert x[0].unique().item() == pytest.approx((0 - 0.5) / b.train.normalize.std[0])
