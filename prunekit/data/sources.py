"""Readers that turn files on disk into in-memory tensors: IDX (MNIST family), CIFAR batches, image folders.

Each reader returns a :class:`RawData`: uint8 (or float) image tensors ``[N, C, H, W]`` and int64 labels
for the official train and test splits, plus the normalisation constants of the data set.
"""
from __future__ import annotations

import gzip
import io
import logging
import os
import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

log = logging.getLogger(__name__)

__all__ = ["RawData", "read_idx", "read_mnist_like", "read_cifar", "read_imagefolder", "make_synthetic"]

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@dataclass
class RawData:
    train_x: torch.Tensor  # [N, C, H, W] uint8 (images) or float32
    train_y: torch.Tensor  # [N] int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]  # per channel, in [0, 1] units
    std: tuple[float, ...]
    augment: str = "none"  # default augmentation of the data set
    crop_padding: int = 0  # pixels, for the random-crop augmentation
    classes: tuple[str, ...] = ()
    val_x: torch.Tensor | None = None  # a validation split of its own (text split by document); else drawn from train
    val_y: torch.Tensor | None = None
    corpus: object | None = None  # the text corpus (tokenizer, documents of each split) for token data


# --------------------------------------------------------------------------------------------- IDX
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed): the format of MNIST and Fashion-MNIST.

    Example:
        >>> import tempfile, struct
        >>> p = os.path.join(tempfile.mkdtemp(), "x-idx1-ubyte")
        >>> _ = open(p, "wb").write(struct.pack(">I", 0x801) + struct.pack(">I", 3) + bytes([7, 8, 9]))
        >>> read_idx(p).tolist()
        [7, 8, 9]
    """
    path = str(path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path!r}: {e}; re-download or reinstall the data set") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path!r} is not an IDX file (bad magic number {data[:4].hex()!r})")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - offset != expected:
        raise DataError(f"IDX file {path!r} is truncated or corrupt: header says shape {shape} "
                        f"({expected} bytes), file has {len(data) - offset}; re-download it")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)


_IDX_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    return None


@lru_cache(maxsize=4)
def _read_idx_folder(folder: str, mtime: float) -> dict[str, np.ndarray]:
    return {k: read_idx(_find(Path(folder), stem)) for k, stem in _IDX_FILES.items()}


def read_mnist_like(name: str, data_dir: str | None, how_to_get: str, mean: float, std: float) -> RawData:
    """MNIST or Fashion-MNIST from the four standard IDX files in ``data_dir``."""
    folder = Path(data_dir)
    missing = [stem + "(.gz)" for stem in _IDX_FILES.values() if _find(folder, stem) is None]
    if missing:
        raise DataError(f"{name} not found: {folder} lacks {', '.join(missing)}. {how_to_get}")
    arrays = _read_idx_folder(str(folder.resolve()), max(os.path.getmtime(_find(folder, s)) for s in _IDX_FILES.values()))
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{name} {split} files in {folder} do not match: images {x.shape}, labels {y.shape}")
    t = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
    return RawData(
        train_x=t["train_x"].unsqueeze(1), train_y=t["train_y"].long(),
        test_x=t["test_x"].unsqueeze(1), test_y=t["test_y"].long(),
        num_classes=10, mean=(mean,), std=(std,), augment="crop", crop_padding=2,
    )


# ------------------------------------------------------------------------------------------- CIFAR
class _CifarUnpickler(pickle.Unpickler):
    """Allows only what the standard CIFAR python batches contain: dicts, lists, bytes and numpy arrays."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2; returns bytes, nothing else
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of the CIFAR format")


def _load_cifar_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError) as e:
        raise DataError(f"cannot read CIFAR batch {str(path)!r}: {e}; re-download the python version") from e
    if not isinstance(d, dict):
        raise DataError(f"CIFAR batch {str(path)!r} is not a dict; re-download the python version")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def read_cifar(num_classes: int, data_dir: str) -> RawData:
    """CIFAR-10/100 from the python-pickle batches (``cifar-10-batches-py/`` / ``cifar-100-python/``)."""
    if num_classes == 10:
        sub, train_files, test_files, key = "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"
        mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    else:
        sub, train_files, test_files, key = "cifar-100-python", ["train"], ["test"], "fine_labels"
        mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    root = Path(data_dir)
    folder = root / sub if (root / sub).is_dir() else root
    missing = [f for f in train_files + test_files if not (folder / f).is_file()]
    if missing:
        url = "https://www.cs.toronto.edu/~kriz/cifar.html"
        raise DataError(
            f"CIFAR-{num_classes} not found: {folder.resolve()} lacks {', '.join(missing)}. Download the python version "
            f"(cifar-{num_classes}-python.tar.gz) from {url}, extract it and pass data_dir=/the/folder "
            f"(--data-dir on the command line) containing {sub}/"
        )

    def read(files):
        xs, ys = [], []
        for f in files:
            d = _load_cifar_batch(folder / f)
            x = np.asarray(d["data"], dtype=np.uint8)
            xs.append(x.reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[key], dtype=np.int64))
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    trx, try_ = read(train_files)
    tex, tey = read(test_files)
    return RawData(trx, try_, tex, tey, num_classes, mean, std, augment="crop+flip", crop_padding=4)


# ------------------------------------------------------------------------------------- image folder
_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _scan(folder: Path) -> dict[str, list[Path]]:
    return {d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in _IMAGE_EXT)
            for d in sorted(folder.iterdir()) if d.is_dir()}


def read_imagefolder(path: str, *, image_size: int = 32, grayscale: bool = False,
                     test_fraction: float = 0.2, seed: int = 0) -> RawData:
    """Images in ``path/<class>/*`` (or ``path/train/<class>``, ``path/test|val/<class>``), resized."""
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow comes with torchvision
        raise DataError("imagefolder data sets need Pillow: pip install 'prunekit[vision]'") from e
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"imagefolder path {path!r} is not a folder; pass 'imagefolder:/folder/with/class/subfolders'")
    test_dir = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
    train_dir = root / "train" if (root / "train").is_dir() and test_dir is not None else root
    train_scan = _scan(train_dir)
    classes = tuple(c for c, files in train_scan.items() if files)
    if not classes:
        raise DataError(f"no images found under {str(train_dir)!r}: expected {train_dir}/<class>/<image>"
                        f" with extensions {', '.join(_IMAGE_EXT)}")
    mode = "L" if grayscale else "RGB"

    def load(scan):
        xs, ys = [], []
        for label, c in enumerate(classes):
            for p in scan.get(c, []):
                with Image.open(p) as im:
                    im = im.convert(mode).resize((image_size, image_size), Image.BILINEAR)
                    a = np.asarray(im, dtype=np.uint8)
                xs.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
                ys.append(label)
        c = 1 if grayscale else 3
        x = torch.from_numpy(np.stack(xs)) if xs else torch.zeros(0, c, image_size, image_size, dtype=torch.uint8)
        return x, torch.tensor(ys, dtype=torch.long)

    x, y = load(train_scan)
    if test_dir is not None:
        tx, ty = load(_scan(test_dir))
    else:
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + 7919))
        n_test = int(round(test_fraction * len(x)))
        tx, ty = x[perm[:n_test]], y[perm[:n_test]]
        x, y = x[perm[n_test:]], y[perm[n_test:]]
    xf = x.to(torch.float32) / 255.0
    mean = tuple(xf.mean(dim=(0, 2, 3)).tolist())
    std = tuple(max(s, 1e-3) for s in xf.std(dim=(0, 2, 3)).tolist())
    return RawData(x, y, tx, ty, len(classes), mean, std, augment="crop+flip",
                   crop_padding=max(1, image_size // 8), classes=classes)


# ---------------------------------------------------------------------------------------- synthetic
def make_synthetic(*, shape=(1, 28, 28), num_classes: int = 10, n_train: int = 512, n_test: int = 256,
                   noise: float = 1.0, seed: int = 0) -> RawData:
    """Learnable random images: each class has a fixed random prototype; a sample is prototype + noise."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(num_classes, *shape, generator=g)  # [K, C, H, W]

    def draw(n):
        y = torch.randint(0, num_classes, (n,), generator=g)
        return protos[y] + noise * torch.randn(n, *shape, generator=g), y

    trx, try_ = draw(n_train)
    tex, tey = draw(n_test)
    c = shape[0]
    return RawData(trx, try_, tex, tey, num_classes, mean=(0.0,) * c, std=(float((1 + noise ** 2) ** 0.5),) * c)
