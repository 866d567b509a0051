"""Episodic few-shot tasks (N-way K-shot) drawn from a labelled data set, with a meta-train / held-out class split.

Few-shot meta-learning (Reptile, MAML, and the pruned Reptile of Tian et al. 2020) trains on *tasks*: ``ways``
classes drawn at random, relabelled ``0 .. ways-1`` in a random order, with a few examples each. The classes are
split once: meta-training draws tasks from ``split.train`` only, and few-shot accuracy is measured on tasks from
the held-out ``split.test`` classes, which the meta-learner never saw.

Example:
    >>> import torch
    >>> images, labels = torch.randn(60, 1, 4, 4), torch.arange(6).repeat(10)
    >>> split = split_classes(labels, held_out=2, seed=0)
    >>> len(split.train), len(split.test), set(split.train) & set(split.test)
    (4, 2, set())
    >>> tasks = EpisodeSampler(images, labels, split.train, ways=3, seed=0)
    >>> ep = tasks.episode(shots=2, queries=1)
    >>> tuple(ep.support_x.shape), sorted(ep.support_y.tolist()), sorted(ep.query_y.tolist())
    ((6, 1, 4, 4), [0, 0, 1, 1, 2, 2], [0, 1, 2])
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from ..errors import ConfigError

__all__ = ["ClassSplit", "Episode", "EpisodeSampler", "split_classes", "gather"]


@dataclass(frozen=True)
class ClassSplit:
    train: tuple[int, ...]  # classes tasks are meta-trained on
    test: tuple[int, ...]  # held-out classes: few-shot accuracy is measured on tasks drawn from them


@dataclass
class Episode:
    """One task: support examples to adapt on, query examples to score; labels in ``0 .. ways-1``."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    classes: tuple[int, ...]  # the original class of label 0, 1, ...

    def batches(self, batch_size: int, steps: int, generator: torch.Generator) -> list[tuple]:
        """``steps`` mini-batches of the support set: reshuffled passes, each batch within one pass."""
        n, out = len(self.support_y), []
        order = torch.empty(0, dtype=torch.long)
        while len(out) < steps:
            if len(order) == 0:
                order = torch.randperm(n, generator=generator)
            take, order = order[:batch_size], order[batch_size:]
            out.append((self.support_x[take], self.support_y[take]))
        return out


def gather(batches: Iterable) -> tuple[torch.Tensor, torch.Tensor]:
    """All ``(inputs, labels)`` of an iterable of batches as two tensors (one pass)."""
    xs, ys = zip(*((x, y) for x, y in batches))
    return torch.cat(xs), torch.cat(ys)


def split_classes(labels: torch.Tensor, held_out: int | Sequence[int], seed: int = 0) -> ClassSplit:
    """Split the classes present in ``labels``: ``held_out`` is a number of classes drawn at random with
    ``seed``, or the held-out classes themselves."""
    classes = sorted(int(c) for c in torch.unique(labels))
    if isinstance(held_out, int):
        if not 1 <= held_out < len(classes):
            raise ConfigError(f"held_out={held_out}: give between 1 and {len(classes) - 1} held-out classes "
                              f"(the data has {len(classes)} classes)")
        perm = torch.randperm(len(classes), generator=torch.Generator().manual_seed(seed)).tolist()
        test = sorted(classes[i] for i in perm[:held_out])
    else:
        test = sorted(int(c) for c in held_out)
        missing = [c for c in test if c not in classes]
        if missing or not test or len(test) >= len(classes):
            raise ConfigError(f"held_out={list(held_out)}: give a non-empty proper subset of the classes {classes}")
    return ClassSplit(train=tuple(c for c in classes if c not in test), test=tuple(test))


class EpisodeSampler:
    """Draws N-way tasks from ``classes`` of ``(images, labels)``; every draw uses the sampler's seeded generator.

    ``always`` lists classes every task includes (e.g. all held-out classes when there are fewer of them than
    ``ways``: the rest of the task's classes are then drawn from ``classes``). Examples of one task never repeat.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[int], *, ways: int,
                 always: Sequence[int] = (), seed: int = 0):
        self.images, self.ways, self.always = images, int(ways), tuple(int(c) for c in always)
        self.classes = tuple(int(c) for c in classes if int(c) not in self.always)
        if len(self.always) > ways or len(self.always) + len(self.classes) < ways:
            raise ConfigError(f"ways={ways}: the task classes {self.always + self.classes} cannot fill a {ways}-way "
                              f"task with {list(self.always)} in every task; lower ways or give more classes")
        self.index = {c: torch.nonzero(labels == c).flatten() for c in (*self.always, *self.classes)}
        empty = [c for c, idx in self.index.items() if len(idx) == 0]
        if empty:
            raise ConfigError(f"classes {empty} have no examples in the data; pass classes present in labels")
        self.generator = torch.Generator().manual_seed(seed)

    def _classes(self) -> list[int]:
        g = self.generator
        pick = [self.classes[i] for i in torch.randperm(len(self.classes), generator=g)[:self.ways - len(self.always)]]
        chosen = [*self.always, *pick]
        return [chosen[i] for i in torch.randperm(len(chosen), generator=g)]  # label i <- chosen[i], random order

    def episode(self, shots: int, queries: int = 0) -> Episode:
        """``shots`` support and ``queries`` query examples of each of ``ways`` classes, disjoint."""
        sx, sy, qx, qy = [], [], [], []
        classes = self._classes()
        for label, c in enumerate(classes):
            idx = self.index[c]
            if len(idx) < shots + queries:
                raise ConfigError(f"class {c} has {len(idx)} examples; a task needs shots + queries = "
                                  f"{shots + queries}; lower them or give more data")
            take = idx[torch.randperm(len(idx), generator=self.generator)[:shots + queries]]
            sx.append(self.images[take[:shots]])
            qx.append(self.images[take[shots:]])
            sy += [label] * shots
            qy += [label] * queries
        return Episode(torch.cat(sx), torch.tensor(sy), torch.cat(qx), torch.tensor(qy, dtype=torch.long),
                       tuple(classes))
