"""Batches straight from in-memory tensors: shuffle with a seeded generator, slice, augment, normalise.

A ``TensorLoader`` replaces ``DataLoader`` for data sets that fit in memory: no worker processes, no
per-sample collation, so on a CPU run the time goes into the model, not into loading.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import torch

from ..errors import ConfigError

__all__ = ["TensorLoader", "Normalize"]


class Transform(Protocol):
    """Per-sample random choices drawn once per epoch (``draw``), applied to a batch (``apply``)."""

    def draw(self, n: int, gen: torch.Generator) -> dict[str, torch.Tensor]: ...

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor: ...


@dataclass(frozen=True)
class Normalize:
    """``(x / scale - mean) / std`` per channel; ``scale`` is 255 for uint8 images, 1 for float data."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = 255.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C, H, W] (uint8 or float) -> float32 [B, C, H, W]
        c = x.shape[1]
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, c, 1, 1) * self.scale
        inv = 1.0 / (torch.tensor(self.std, dtype=torch.float32).view(1, c, 1, 1) * self.scale)
        return (x.to(torch.float32) - mean).mul_(inv)


class TensorLoader:
    """Iterate ``(inputs, targets)`` batches over tensors kept in memory.

    ``shuffle`` draws the order of epoch ``e`` from ``torch.randperm(n)`` seeded with ``seed + e`` (the same
    order ``DistributedSampler`` uses, so one process with batch ``B * world`` sees the same global batches
    as ``world`` processes with batch ``B``). Iterating without calling :meth:`set_epoch` moves to the next
    epoch after each pass; ``set_epoch(e)`` pins the next pass to epoch ``e``. ``transform`` (augmentation,
    see :class:`prunekit.data.augment.Augment`) draws its random choices for every sample at the start of
    an epoch and applies them by sample index, so they do not depend on batching or sharding;
    ``normalize`` runs last.

    Example:
        >>> x, y = torch.arange(10.).view(10, 1, 1, 1), torch.arange(10)
        >>> loader = TensorLoader(x, y, batch_size=4)
        >>> len(loader), [b[1].tolist() for b in loader]
        (3, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]])
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        batch_size: int = 128,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        transform: Transform | None = None,
        normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
        distributed: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        if len(inputs) != len(targets):
            raise ConfigError(f"inputs and targets differ in length ({len(inputs)} vs {len(targets)})")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r} must be a positive int; pass e.g. batch_size=128")
        self.inputs, self.targets = inputs, targets
        self.batch_size, self.shuffle, self.drop_last, self.seed = batch_size, shuffle, drop_last, seed
        self.transform, self.normalize = transform, normalize
        self.sampler = None
        if distributed:
            self.sampler = _distributed_sampler(len(inputs), shuffle, seed, drop_last, num_replicas, rank)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Pin the next pass to ``epoch`` (its shuffle order and augmentation draws)."""
        self.epoch = int(epoch)

    @property
    def num_samples(self) -> int:
        return len(self.sampler) if self.sampler is not None else len(self.inputs)

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _order(self, epoch: int) -> torch.Tensor | None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
            return torch.tensor(list(self.sampler), dtype=torch.long)
        if self.shuffle:
            return torch.randperm(len(self.inputs), generator=torch.Generator().manual_seed(self.seed + epoch))
        return None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        order = self._order(epoch)
        params = None
        if self.transform is not None:  # one draw per sample of the whole data set, looked up by index
            gen = torch.Generator().manual_seed((self.seed + 1) * 1_000_003 + epoch)
            params = self.transform.draw(len(self.inputs), gen)
        for i in range(len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            idx = torch.arange(sl.start, min(sl.stop, len(self.inputs))) if order is None else order[sl]
            x, y = (self.inputs[sl], self.targets[sl]) if order is None else (self.inputs[idx], self.targets[idx])
            if params is not None:
                x = self.transform.apply(x, {k: v[idx] for k, v in params.items()})
            if self.normalize is not None:
                x = self.normalize(x)
            yield x, y


class _Sized:
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


def _distributed_sampler(n, shuffle, seed, drop_last, num_replicas, rank):
    import torch.distributed as dist
    from torch.utils.data import DistributedSampler

    if num_replicas is None or rank is None:
        if not (dist.is_available() and dist.is_initialized()):
            raise ConfigError(
                "distributed=True needs an initialised process group (run under torchrun and call "
                "torch.distributed.init_process_group first) or explicit num_replicas= and rank="
            )
    return DistributedSampler(_Sized(n), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                              drop_last=drop_last)
