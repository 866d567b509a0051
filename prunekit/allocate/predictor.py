"""An accuracy predictor over discrete network configurations, and the evolutionary search it guides.

APQ (Wang et al., CVPR 2020) and once-for-all (Cai et al., ICLR 2020) rank candidate sub-networks without
measuring each one: a small MLP maps the encoding of a configuration (one choice per dimension: a group's
kept width, a layer's bit-width, ...) to its accuracy, fitted on a few hundred measured configurations, and an
evolutionary search then maximises the *predicted* accuracy under a cost constraint.

* :class:`Encoding`: per-dimension choice lists; a configuration (one choice index per dimension) becomes the
  concatenation of one-hot vectors (OFA/APQ's encoding).
* :class:`AccuracyPredictor`: the MLP (``layers`` hidden layers of ``hidden`` ReLU units, OFA's 3 x 400),
  :meth:`~AccuracyPredictor.fit` on its own train / validate split (held out by a seeded permutation) and
  returns :class:`PredictorFit` with the held-out Spearman rank correlation and RMSE.
* :func:`spearman`: rank correlation with average ranks for ties.
* :func:`evolve`: the evolution finder of OFA/APQ: a population of feasible configurations, the top
  ``parent_ratio`` kept each generation, ``mutation_ratio`` of the new population from mutations (every gene
  re-drawn with probability ``mutate_prob``) and the rest from uniform crossovers of two parents; a child that
  fails ``feasible`` is drawn again.

This module knows nothing of models; :mod:`prunekit.methods.apq` ties it to sub-networks and bit-widths.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["Encoding", "AccuracyPredictor", "PredictorFit", "spearman", "rankdata", "evolve", "EvolutionResult"]


def rankdata(a: Sequence[float]) -> np.ndarray:
    """Ranks from 1, ties given the mean of the ranks they span.

    Example:
        >>> rankdata([10, 20, 20, 5]).tolist()
        [2.0, 3.5, 3.5, 1.0]
    """
    a = np.asarray(a, float)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a), float)
    ranks[order] = np.arange(1, len(a) + 1)
    vals, inv = np.unique(a, return_inverse=True)
    sums = np.bincount(inv, weights=ranks)
    counts = np.bincount(inv)
    return (sums / counts)[inv]


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson correlation of the average ranks); 0.0 when either is constant.

    Example:
        >>> spearman([1, 2, 3, 4], [10, 20, 30, 40]), spearman([1, 2, 3], [3, 2, 1])
        (1.0, -1.0)
    """
    if len(a) != len(b):
        raise ConfigError(f"spearman: {len(a)} and {len(b)} values; give two sequences of the same length")
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(np.sqrt((ra ** 2).sum() * (rb ** 2).sum()))
    return float((ra * rb).sum() / den) if den > 0 else 0.0


@dataclass(frozen=True)
class Encoding:
    """The choices of every dimension: ``choices[d]`` lists what dimension ``d`` may take (``names[d]``
    names it). A configuration is a tuple of choice *indices*; :meth:`encode` one-hot encodes it.

    Example:
        >>> e = Encoding.of({"a": [0.5, 1.0], "b": [4, 6, 8]})
        >>> e.encode([(1, 2)]).tolist(), e.values((1, 2))
        ([[0.0, 1.0, 0.0, 0.0, 1.0]], (1.0, 8))
    """

    names: tuple
    choices: tuple

    @classmethod
    def of(cls, choices: dict) -> "Encoding":
        bad = [n for n, c in choices.items() if len(c) == 0]
        if bad:
            raise ConfigError(f"Encoding: dimension(s) {bad} have no choice; give every dimension at least one")
        return cls(tuple(map(str, choices)), tuple(tuple(c) for c in choices.values()))

    def __len__(self) -> int:
        return len(self.choices)

    @property
    def width(self) -> int:
        """Length of an encoded configuration."""
        return int(sum(len(c) for c in self.choices))

    def values(self, config: Sequence[int]) -> tuple:
        """The chosen values of a configuration of indices."""
        return tuple(self.choices[d][int(i)] for d, i in enumerate(config))

    def encode(self, configs: Sequence[Sequence[int]]) -> np.ndarray:
        """``[n, width]`` one-hot rows of ``configs`` (each a sequence of choice indices)."""
        out = np.zeros((len(configs), self.width), np.float32)
        offs = np.cumsum([0] + [len(c) for c in self.choices[:-1]])
        for r, cfg in enumerate(configs):
            if len(cfg) != len(self):
                raise ConfigError(f"a configuration needs {len(self)} choice indices (one per dimension); got "
                                  f"{len(cfg)}")
            for d, i in enumerate(cfg):
                if not 0 <= int(i) < len(self.choices[d]):
                    raise ConfigError(f"dimension {self.names[d]!r}: choice index {i} out of range "
                                      f"0..{len(self.choices[d]) - 1}")
                out[r, offs[d] + int(i)] = 1.0
        return out

    def random(self, rng: np.random.Generator) -> tuple:
        """A configuration drawn uniformly, dimension by dimension."""
        return tuple(int(rng.integers(len(c))) for c in self.choices)


@dataclass
class PredictorFit:
    """What :meth:`AccuracyPredictor.fit` measured: sizes of the two splits, Spearman and RMSE on each."""

    n_train: int
    n_val: int
    train_spearman: float
    val_spearman: float
    val_rmse: float
    val_index: list = field(default_factory=list)  # rows of the input that were held out

    def as_dict(self) -> dict:
        return {"n_train": self.n_train, "n_val": self.n_val, "train_spearman": self.train_spearman,
                "val_spearman": self.val_spearman, "val_rmse": self.val_rmse}


class AccuracyPredictor(nn.Module):
    """An MLP from an encoded configuration to its accuracy (OFA/APQ: 3 hidden layers of 400 ReLU units).

    The target is standardised inside (mean and std of the training split), so accuracies in [0, 1] and
    losses train alike. :meth:`fit` holds out ``val_fraction`` of the rows (a seeded permutation) and reports
    how well the predictor *ranks* them, which is what a search needs.
    """

    def __init__(self, in_features: int, *, hidden: int = 400, layers: int = 3, seed: int = 0):
        super().__init__()
        if in_features < 1 or hidden < 1 or layers < 1:
            raise ConfigError(f"AccuracyPredictor(in_features={in_features}, hidden={hidden}, layers={layers}): "
                              f"each must be >= 1")
        g = torch.Generator().manual_seed(seed)
        mods, d = [], in_features
        for _ in range(layers):
            lin = nn.Linear(d, hidden)
            mods += [lin, nn.ReLU()]
            d = hidden
        mods.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*mods)
        with torch.no_grad():  # seeded initialisation, independent of the global RNG
            for m in self.net:
                if isinstance(m, nn.Linear):
                    bound = 1.0 / np.sqrt(m.in_features)
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 2 * bound - bound)
                    m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 2 * bound - bound)
        self.register_buffer("mu", torch.zeros(()))
        self.register_buffer("sd", torch.ones(()))
        self.seed = seed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1) * self.sd + self.mu

    @torch.no_grad()
    def predict(self, x) -> np.ndarray:
        """Predicted accuracies of encoded rows ``x`` (``[n, in_features]``)."""
        self.eval()
        return self(torch.as_tensor(np.asarray(x), dtype=torch.float32)).numpy().astype(float)

    def fit(self, x, y, *, val_fraction: float = 0.2, epochs: int = 300, lr: float = 1e-3,
            weight_decay: float = 1e-4, batch_size: int = 64) -> PredictorFit:
        """Train on ``1 - val_fraction`` of the rows (Adam, MSE on the standardised target), report on the rest."""
        x = np.asarray(x, np.float32)
        y = np.asarray(y, np.float32)
        n = len(y)
        if len(x) != n:
            raise ConfigError(f"fit: {len(x)} encoded rows but {n} accuracies")
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"val_fraction={val_fraction!r} must be in [0, 1)")
        n_val = int(round(n * val_fraction))
        if n - n_val < 2 or (val_fraction > 0 and n_val < 2):
            raise ConfigError(f"fit: {n} measured configurations leave {n - n_val} to train on and {n_val} to "
                              f"validate; measure more configurations (at least 2 in each split)")
        perm = np.random.default_rng(self.seed).permutation(n)
        val, tr = perm[:n_val], perm[n_val:]
        xt, yt = torch.from_numpy(x[tr]), torch.from_numpy(y[tr])
        self.mu.fill_(float(yt.mean()))
        self.sd.fill_(max(float(yt.std()), 1e-6) if len(yt) > 1 else 1.0)
        opt = torch.optim.Adam(self.net.parameters(), lr=lr, weight_decay=weight_decay)
        g = torch.Generator().manual_seed(self.seed)
        self.train()
        for _ in range(epochs):
            order = torch.randperm(len(tr), generator=g)
            for s in range(0, len(tr), batch_size):
                idx = order[s:s + batch_size]
                pred = self.net(xt[idx]).squeeze(-1)
                loss = ((pred - (yt[idx] - self.mu) / self.sd) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        p_tr = self.predict(x[tr])
        out = PredictorFit(n_train=len(tr), n_val=n_val, train_spearman=spearman(p_tr, y[tr]),
                           val_spearman=float("nan"), val_rmse=float("nan"), val_index=val.tolist())
        if n_val:
            p_val = self.predict(x[val])
            out.val_spearman = spearman(p_val, y[val])
            out.val_rmse = float(np.sqrt(np.mean((p_val - y[val]) ** 2)))
        return out


@dataclass
class EvolutionResult:
    """The best configuration found, its fitness, the best fitness after each generation, how many
    candidates were drawn (including those refused as infeasible) and the final population, best first."""

    best: tuple
    fitness: float
    history: list
    draws: int
    evaluated: int
    population: list = field(default_factory=list)  # [(config, fitness)] of the last generation, best first

    def top(self, k: int) -> list:
        """The ``k`` best distinct configurations of the last generation."""
        out = []
        for c, _ in self.population:
            if c not in out:
                out.append(c)
            if len(out) == k:
                break
        return out


def evolve(encoding: Encoding, fitness: Callable[[list], np.ndarray], feasible: Callable[[tuple], bool], *,
           population: int = 100, generations: int = 500, parent_ratio: float = 0.25, mutation_ratio: float = 0.5,
           mutate_prob: float = 0.1, seed: int = 0, max_tries: int = 10_000) -> EvolutionResult:
    """OFA/APQ's evolution finder over ``encoding``'s configurations (see the module docstring).

    ``fitness(configs) -> array``: higher is better, evaluated on a whole population at once (a predictor);
    ``feasible(config)``: the cost constraint. Raises ConfigError when ``max_tries`` draws give no feasible
    configuration.

    Example:
        >>> e = Encoding.of({"a": [1, 2, 3], "b": [1, 2, 3]})
        >>> fit = lambda cs: np.array([sum(e.values(c)) for c in cs], float)
        >>> r = evolve(e, fit, lambda c: sum(e.values(c)) <= 4, population=8, generations=5)
        >>> r.fitness
        4.0
    """
    if population < 2 or generations < 0:
        raise ConfigError(f"population={population} must be >= 2 and generations={generations} >= 0")
    if not (0 < parent_ratio <= 1 and 0 <= mutation_ratio <= 1 and 0 <= mutate_prob <= 1):
        raise ConfigError(f"parent_ratio={parent_ratio}, mutation_ratio={mutation_ratio}, mutate_prob={mutate_prob}: "
                          f"need 0 < parent_ratio <= 1 and both others in [0, 1]")
    rng = np.random.default_rng(seed)
    draws = 0

    def draw(make) -> tuple:
        nonlocal draws
        for _ in range(max_tries):
            draws += 1
            c = make()
            if feasible(c):
                return c
        raise ConfigError(f"evolve: no feasible configuration in {max_tries} draws; the constraint may be "
                          f"unreachable with these choices (raise the target or add smaller choices)")

    pop = [draw(lambda: encoding.random(rng)) for _ in range(population)]
    fit = np.asarray(fitness(pop), float)
    evaluated = len(pop)
    n_par = max(1, int(round(population * parent_ratio)))
    n_mut = int(round(population * mutation_ratio))
    history = [float(fit.max())]
    for _ in range(generations):
        order = np.argsort(-fit, kind="stable")[:n_par]
        parents = [pop[i] for i in order]
        par_fit = fit[order]

        def mutate():
            p = parents[int(rng.integers(len(parents)))]
            return tuple(int(rng.integers(len(encoding.choices[d]))) if rng.random() < mutate_prob else g
                         for d, g in enumerate(p))

        def cross():
            a, b = parents[int(rng.integers(len(parents)))], parents[int(rng.integers(len(parents)))]
            return tuple(ga if rng.random() < 0.5 else gb for ga, gb in zip(a, b))

        children = [draw(mutate) for _ in range(n_mut)] + [draw(cross) for _ in range(population - n_par - n_mut)]
        child_fit = np.asarray(fitness(children), float) if children else np.zeros(0)
        evaluated += len(children)
        pop = parents + children
        fit = np.concatenate([par_fit, child_fit])
        history.append(float(fit.max()))
    order = np.argsort(-fit, kind="stable")
    return EvolutionResult(best=pop[int(order[0])], fitness=float(fit[order[0]]), history=history, draws=draws,
                           evaluated=evaluated, population=[(pop[i], float(fit[i])) for i in order])
