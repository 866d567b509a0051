"""Data sets as in-memory tensors, batch loaders, and fixed calibration batches.

``load(name)`` reads a data set once into memory (uint8 images), splits a validation set off the training
split, and returns a :class:`DataBundle` whose loaders augment and normalise whole batches at a time.

Names: ``fashion-mnist`` (default), ``mnist``, ``cifar10``, ``cifar100``, ``imagefolder:<path>``,
``synthetic`` (learnable random images; options ``shape``, ``num_classes``, ``n_train``, ``n_test``,
``noise``), ``synthetic-text`` (token sequences from a random Markov chain, for language models;
options ``vocab_size``, ``seq_len``, ``n_train``, ``n_test``) and ``text:<corpus>`` (real text split by
document, tokenized, in blocks of ``seq_len`` tokens: ``text:python-docs`` or ``text:/folder/of/txt``; options
``seq_len``, ``vocab_size``, ``tokenizer``; see :mod:`prunekit.data.text`).

Example:
    >>> from prunekit import data
    >>> b = data.load("synthetic", batch_size=32, n_train=64, n_test=32)
    >>> x, y = next(iter(b.train))
    >>> tuple(x.shape), b.num_classes, b.in_channels, b.input_size
    ((32, 1, 28, 28), 10, 1, 28)
"""
from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .._registry import Registry
from ..errors import ConfigError, DataError
from .augment import Augment, parse_augment
from .loader import Normalize, TensorLoader
from .text import load_text
from .sources import FASHION_DIR, RawData, make_synthetic, read_cifar, read_imagefolder, read_mnist_like

log = logging.getLogger(__name__)

__all__ = ["load", "DataBundle", "TensorLoader", "list_datasets", "register_dataset", "DATASETS", "Augment",
           "per_class_batches", "first_examples", "first_batches"]

#: name -> reader(data_dir, seed, **options) -> RawData
DATASETS: Registry[Callable[..., RawData]] = Registry("dataset")


def register_dataset(name: str):
    """Register ``reader(data_dir, seed, **options) -> RawData`` under ``name``."""
    return DATASETS.register(name)


def list_datasets() -> list[str]:
    """Registered data set names (``imagefolder`` is used as ``imagefolder:<path>``)."""
    return DATASETS.names()


def _data_dir(data_dir, env_default):
    return data_dir or os.environ.get("PRUNEKIT_DATA_DIR") or env_default


@register_dataset("fashion-mnist")
def _fashion(data_dir, seed):
    how = ("Install it with 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu; files go to "
           f"{FASHION_DIR}) or download the four IDX files from "
           "https://github.com/zalandoresearch/fashion-mnist and pass data_dir=FOLDER (--data-dir FOLDER).")
    return read_mnist_like("Fashion-MNIST", _data_dir(data_dir, FASHION_DIR), how, mean=0.2860, std=0.3530)


@register_dataset("mnist")
def _mnist(data_dir, seed):
    how = ("Download the four IDX files (train-images-idx3-ubyte.gz, ...) from "
           "https://yann.lecun.com/exdb/mnist/ (or a mirror) into a folder and pass data_dir=FOLDER "
           "(--data-dir FOLDER), or set PRUNEKIT_DATA_DIR.")
    return read_mnist_like("MNIST", _data_dir(data_dir, "/usr/share/datasets/mnist"), how, mean=0.1307, std=0.3081)


@register_dataset("cifar10")
def _cifar10(data_dir, seed):
    return read_cifar(10, _data_dir(data_dir, "."))


@register_dataset("cifar100")
def _cifar100(data_dir, seed):
    return read_cifar(100, _data_dir(data_dir, "."))


@register_dataset("imagefolder")
def _imagefolder(data_dir, seed, *, path: str = "", image_size: int = 32, grayscale: bool = False,
                 test_fraction: float = 0.2):
    return read_imagefolder(path, image_size=image_size, grayscale=grayscale, test_fraction=test_fraction, seed=seed)


@register_dataset("synthetic")
def _synthetic(data_dir, seed, *, shape=(1, 28, 28), num_classes: int = 10, n_train: int = 512,
               n_test: int = 256, noise: float = 1.0):
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"shape={shape!r} must be (channels, height, width) with positive sizes, e.g. (1, 28, 28)")
    return make_synthetic(shape=shape, num_classes=num_classes, n_train=n_train, n_test=n_test, noise=noise, seed=seed)


@register_dataset("synthetic-text")
def _synthetic_text(data_dir, seed, *, vocab_size: int = 64, seq_len: int = 32, n_train: int = 512,
                    n_test: int = 128):
    g = torch.Generator().manual_seed(seed)
    # a sparse random Markov chain: each token has 3 likely successors, so a model can learn it
    nxt = torch.randint(0, vocab_size, (vocab_size, 3), generator=g)

    def draw(n):
        seq = torch.empty(n, seq_len + 1, dtype=torch.long)
        seq[:, 0] = torch.randint(0, vocab_size, (n,), generator=g)
        for t in range(seq_len):
            seq[:, t + 1] = nxt[seq[:, t], torch.randint(0, 3, (n,), generator=g)]
        return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()

    trx, try_ = draw(n_train)
    tex, tey = draw(n_test)
    return RawData(trx, try_, tex, tey, vocab_size, mean=(), std=())


@register_dataset("text")
def _text(data_dir, seed, *, corpus: str = "python-docs", seq_len: int = 128, vocab_size: int = 4096,
          tokenizer: str = "bpe"):
    if not (isinstance(seq_len, int) and not isinstance(seq_len, bool) and seq_len >= 2):
        raise ConfigError(f"seq_len={seq_len!r} must be an int >= 2 (tokens per block), e.g. 128")
    c = load_text(corpus, data_dir=data_dir, vocab_size=vocab_size, tokenizer=tokenizer)
    (trx, try_), (vx, vy), (tex, tey) = (c.blocks(s, seq_len) for s in ("train", "val", "test"))
    return RawData(trx, try_, tex, tey, c.vocab_size, mean=(), std=(), val_x=vx, val_y=vy, corpus=c)


@dataclass
class DataBundle:
    """Train / validation / test loaders over one data set, plus what a model needs to know about it.

    ``train`` shuffles and augments; ``val`` (``None`` when ``val_fraction=0``) and ``test`` do neither.
    ``input_size`` is an int for square images (a ``(height, width)`` tuple otherwise; the sequence length
    for token data). For token data ``in_channels`` is 1 and ``num_classes`` the vocabulary size; ``corpus``
    holds a real text's tokenizer and split (``corpus.decode(ids)``).
    """

    name: str
    train: TensorLoader
    val: TensorLoader | None
    test: TensorLoader
    num_classes: int
    in_channels: int
    input_size: Any
    seed: int = 0
    classes: tuple = ()
    corpus: Any = field(default=None, repr=False)
    _train_x: torch.Tensor = field(default=None, repr=False)
    _train_y: torch.Tensor = field(default=None, repr=False)
    _normalize: Any = field(default=None, repr=False)

    def calib(self, n_batches: int, batch_size: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A fixed list of ``n_batches`` normalised, un-augmented training batches (same for the same seed)."""
        if not isinstance(n_batches, int) or n_batches < 1:
            raise ConfigError(f"n_batches={n_batches!r} must be a positive int, e.g. calib(4)")
        bs = batch_size or self.train.batch_size
        n = len(self._train_x)
        if n_batches * bs > n:
            raise ConfigError(f"calib(n_batches={n_batches}, batch_size={bs}) needs {n_batches * bs} samples; "
                              f"the training split has {n}: ask for fewer batches or a smaller batch_size")
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + 104729))[: n_batches * bs]
        out = []
        for i in range(n_batches):
            j = idx[i * bs:(i + 1) * bs]
            x = self._train_x[j]
            out.append((self._normalize(x) if self._normalize else x, self._train_y[j]))
        return out

    def per_class(self, n: int, batch_size: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Limited-data mode: ``n`` normalised, un-augmented training images of every class (a seeded draw,
        the same for the same seed) as a list of batches."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"per_class(n={n!r}): n must be a positive int, e.g. per_class(10)")
        perm = torch.randperm(len(self._train_x), generator=torch.Generator().manual_seed(self.seed + 7919))
        x = self._train_x[perm]
        return per_class_batches([(self._normalize(x) if self._normalize else x, self._train_y[perm])], n,
                                 batch_size=batch_size or self.train.batch_size)

    def example_inputs(self, batch: int = 1) -> torch.Tensor:
        """The first ``batch`` training inputs, normalised: for tracing and measuring a model."""
        x = self._train_x[:batch]
        return self._normalize(x) if self._normalize else x.clone()


def first_batches(data, n: int) -> list:
    """The first ``n`` batches of an iterable of batches, as a list (fewer when it holds fewer)."""
    out = []
    for batch in data:
        if len(out) >= n:
            break
        out.append(batch)
    return out


def first_examples(batches, n: int) -> list:
    """The first ``n`` examples of an iterable of ``(inputs, targets)`` batches, as a list of batches (the last
    one cut short); fewer when the batches hold fewer.

    Example:
        >>> [len(x) for x, _ in first_examples([(torch.zeros(4, 1), None)] * 3, 6)]
        [4, 2]
    """
    out, have = [], 0
    for x, y in batches:
        if have >= n:
            break
        take = min(n - have, len(x))
        out.append((x[:take], y[:take] if isinstance(y, torch.Tensor) else y))
        have += take
    return out


def per_class_batches(batches, n: int, *, batch_size: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` examples of every class met in ``batches`` (an iterable of ``(inputs, labels)``), in the
    order they come, regrouped into batches of ``batch_size`` (default: the first batch's size); a class with
    fewer examples keeps what it has. Every batch is read (a class may first appear late).

    Example:
        >>> x, y = torch.arange(6.).view(6, 1), torch.tensor([0, 1, 0, 0, 1, 1])
        >>> [b[1].tolist() for b in per_class_batches([(x, y)], 2, batch_size=3)]
        [[0, 1, 0], [1]]
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"per_class_batches(n={n!r}): n must be a positive int (examples kept per class)")
    taken: dict = {}
    xs, ys = [], []
    for item in batches:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], torch.Tensor)):
            raise ConfigError("per_class_batches: batches must be (inputs, labels) pairs with a label tensor; "
                              "a per-class subset needs the labels")
        x, y = item
        batch_size = batch_size or len(y)
        for i, label in enumerate(y.tolist()):
            if taken.get(label, 0) < n:
                taken[label] = taken.get(label, 0) + 1
                xs.append(x[i])
                ys.append(y[i])
    if not xs:
        raise ConfigError("per_class_batches: batches gave no example")
    x, y = torch.stack(xs), torch.stack(ys)
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)]


def _parse_subset(subset) -> tuple[int | None, int | None]:
    if subset is None:
        return None, None
    if isinstance(subset, int) and not isinstance(subset, bool) and subset > 0:
        return subset, None
    if (isinstance(subset, (tuple, list)) and len(subset) == 2
            and all(s is None or (isinstance(s, int) and s > 0) for s in subset)):
        return subset[0], subset[1]
    raise ConfigError(f"subset={subset!r} must be a positive int (training examples kept), a pair "
                      f"(n_train, n_test), or None for everything")


def load(
    name: str = "fashion-mnist",
    *,
    batch_size: int = 128,
    subset=None,
    val_fraction: float = 0.1,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    augment=None,
    distributed: bool = False,
    eval_batch_size: int | None = None,
    **options,
) -> DataBundle:
    """Load a data set into memory and wrap it in shuffling, augmenting, normalising loaders.

    ``subset``: keep a seeded random ``n`` of the training split (or ``(n_train, n_test)``) — for quick
    runs. ``val_fraction`` of the (subset) training split becomes the validation set. ``augment``: ``None``
    = the data set's default (crop for (Fashion-)MNIST, crop + flip for CIFAR and image folders), ``False``
    / ``"none"``, ``True``, ``"crop"``, ``"flip"`` or ``"crop+flip"``. ``distributed=True`` shards the
    training batches across the ranks of the initialised process group (``DistributedSampler``).
    ``options`` go to the data set reader (e.g. ``shape=`` for ``synthetic``).

    Example:
        >>> b = load("synthetic", batch_size=16, n_train=100, n_test=20, val_fraction=0.2)
        >>> len(b.train), len(b.val), len(b.test), len(b.calib(2))
        (5, 1, 1, 2)
    """
    if not isinstance(name, str):
        raise ConfigError(f"data set name={name!r} must be a string such as 'fashion-mnist'")
    key, _, arg = name.partition(":")
    reader = DATASETS.get(key, argument="name")
    if key == "imagefolder":
        if not arg:
            raise ConfigError("name='imagefolder' needs a folder: pass 'imagefolder:/path/to/folder'")
        options = {"path": arg, **options}
    elif key == "text":
        if not arg:
            raise ConfigError("name='text' needs a corpus: pass 'text:python-docs' or 'text:/path/to/folder'")
        options = {"corpus": arg, **options}
    elif arg:
        raise ConfigError(f"name={name!r}: only 'imagefolder:<path>' and 'text:<corpus>' take a ':' argument; "
                          f"use name={key!r}")
    if not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1):
        raise ConfigError(f"val_fraction={val_fraction!r} must be in [0, 1), e.g. 0.1")
    n_sub, n_test_sub = _parse_subset(subset)
    accepted = [p for p in inspect.signature(reader).parameters if p not in ("data_dir", "seed")]
    bad = sorted(set(options) - set(accepted))
    if bad:
        raise ConfigError(f"data set {key!r} does not take option(s) {bad}; it accepts {accepted or 'none'}")
    if data_dir is not None and not os.path.isdir(data_dir):
        raise DataError(f"data_dir={str(data_dir)!r} is not a folder; pass the folder that holds the data set files")

    raw = reader(str(data_dir) if data_dir is not None else None, seed, **options)

    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(raw.train_x), generator=g)
    for what, n, have in (("training", n_sub, len(raw.train_x)), ("test", n_test_sub, len(raw.test_x))):
        if n is not None and n > have:
            raise ConfigError(f"subset={subset!r} asks for {n} {what} examples; {name!r} has {have}: "
                              f"ask for at most {have}, or subset=None for all of them")
    if n_sub is not None:
        perm = perm[:n_sub]
    own_val = raw.val_x is not None  # a split of its own (documents never shared with train); val_fraction unused
    n_val = 0 if own_val else int(round(val_fraction * len(perm)))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    train_x, train_y = raw.train_x[train_idx], raw.train_y[train_idx]
    test_x, test_y = raw.test_x, raw.test_y
    if n_test_sub is not None:
        tperm = torch.randperm(len(test_x), generator=torch.Generator().manual_seed(seed + 1))[:n_test_sub].sort().values
        test_x, test_y = test_x[tperm], test_y[tperm]
    if len(train_x) == 0:
        raise ConfigError(f"subset={subset!r} with val_fraction={val_fraction} leaves no training examples")

    tokens = train_x.dtype == torch.long
    normalize = None
    if not tokens:
        scale = 255.0 if train_x.dtype == torch.uint8 else 1.0
        normalize = Normalize(tuple(raw.mean), tuple(raw.std), scale)
    aug = None if tokens else parse_augment(augment, raw.augment, raw.crop_padding or 2)
    ebs = eval_batch_size or max(batch_size, 256)
    train = TensorLoader(train_x, train_y, batch_size=batch_size, shuffle=True, seed=seed, transform=aug,
                         normalize=normalize, distributed=distributed)
    if own_val:
        val_x, val_y = raw.val_x, raw.val_y
        n_val = len(val_x)
    else:
        val_x, val_y = raw.train_x[val_idx], raw.train_y[val_idx]
    val = TensorLoader(val_x, val_y, batch_size=ebs, normalize=normalize) if n_val else None
    test = TensorLoader(test_x, test_y, batch_size=ebs, normalize=normalize)
    if tokens:
        in_channels, input_size = 1, int(train_x.shape[1])
    else:
        in_channels, h, w = (int(s) for s in train_x.shape[1:])
        input_size = h if h == w else (h, w)
    log.info("data set %s: %d train, %d val, %d test", name, len(train_x), n_val, len(test_x))
    return DataBundle(name=name, train=train, val=val, test=test, num_classes=raw.num_classes,
                      in_channels=in_channels, input_size=input_size, seed=seed, classes=raw.classes,
                      corpus=raw.corpus, _train_x=train_x, _train_y=train_y, _normalize=normalize)
