"""Reptile with dense-sparse-dense (or iterative hard thresholding) phases: pruning against meta-overfitting.

Paper: Hongduan Tian, Bo Liu, Xiao-Tong Yuan, Qingshan Liu, "Meta-Learning with Network Pruning", ECCV 2020.
https://arxiv.org/abs/2007.03219 (reference code: github.com/HongduanTian/Dense-Sparse-Dense-Reptile)

The goal is not a smaller model but a better few-shot learner. A meta-initialisation learned by Reptile on an
over-parameterised network fits its meta-training tasks much better than new ones (meta-overfitting); the paper
bounds that gap by the number of non-zero weights and so restricts the initialisation to a sparse sub-network
for part of the meta-training. DSD: dense Reptile up to meta-iteration ``sparse_iter``, then a per-layer
magnitude mask at the final rate (the rate-quantile of |w| in each pruned layer), Reptile restricted to the mask
until ``retrain_iter``, then the mask is lifted and the pruned weights, restarting from zero, train densely to the
end. IHT: from ``sparse_iter`` on, a new magnitude mask every ``sparse_interval`` meta-iterations, at rates
``linspace(init_rate, compress_rate, n_intervals)``; the first ``ratio`` of each interval trains sparse, the rest
dense. As in the reference code the first conv layer stays dense (conv 2-4 and the classifier of Conv-4 are
pruned; here: every conv/linear weight but the first), and the inner loop is Adam with beta1 = 0.

Here: the Reptile loop is :class:`prunekit.train.reptile.Reptile` on tasks from
:class:`prunekit.data.episodes.EpisodeSampler`, drawn from the run's training batches with ``held_out`` classes
kept out of meta-training; the phases are :class:`SparsePhases`, a callback that installs, replaces and lifts
hard masks of :mod:`prunekit.masks` at meta-iteration boundaries. The target ``sparsity=S`` is the paper's
``compress_rate`` (per pruned layer). The result is the meta-initialisation: dense when the schedule ends with a
dense phase (as the paper's schedules do), masked when it ends inside a sparse phase (``retrain_iter >=
iterations`` for DSD, ``ratio = 1`` for IHT). Few-shot accuracy (meta-train classes and held-out classes, the
reference's transductive evaluation) is reported in ``info``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ..data.episodes import EpisodeSampler, gather, split_classes
from ..errors import ConfigError
from ..masks import get_masks, get_pattern, install_masks_, prunable_weights, remove_masks_, select_masks
from ..train.callbacks import Callback
from ..train.reptile import Reptile
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

__all__ = ["ReptileDSDConfig", "SparsePhases", "dsd_rate", "iht_rates", "iht_rate", "run"]


@dataclass(frozen=True)
class ReptileDSDConfig(MethodConfig):
    variant: Literal["dsd", "iht"] = "dsd"  # the paper's two schedules (src/dsdtrain.py, src/ihttrain.py)
    iterations: int = option(100000, ge=1)  # meta-iterations in all (example_*.sh: --meta-iters 100000)
    # first masked meta-iteration; None: the scripts' value, 30000 for dsd, 20000 for iht
    sparse_iter: int | None = option(None, ge=0)
    retrain_iter: int = option(90000, ge=0)  # dsd: the mask is lifted here (example_dsd: 90000)
    sparse_interval: int = option(20000, ge=1)  # iht: meta-iterations between re-thresholdings (example_iht: 20000)
    init_rate: float = option(0.1, ge=0, lt=1)  # iht: rate of the first mask (example_iht: 0.1)
    ratio: float = option(0.75, gt=0, le=1)  # iht: sparse fraction of each interval (example_iht: 0.75)
    ways: int = option(5, ge=2)  # N of N-way tasks (paper: 5-way)
    shots: int = option(1, ge=1)  # K of the evaluation tasks (example_*.sh: --shots 1)
    train_shots: int = option(15, ge=1)  # examples per class in a meta-training task (--train-shots 15)
    inner_batch: int = option(10, ge=1)  # inner-loop batch (--inner-batch 10)
    inner_steps: int = option(8, ge=1)  # inner-loop steps per task (--inner-iters 8)
    meta_batch: int = option(5, ge=1)  # tasks per outer update (--meta-batch 5)
    meta_step: float = option(1.0, gt=0)  # outer step size at the start (--meta-step 1)
    meta_step_final: float = option(0.0, ge=0)  # ... annealed linearly to this (--meta-step-final 0)
    inner_lr: float = option(1e-3, gt=0)  # Adam (beta1 = 0) learning rate of the inner loop (--learning-rate 0.001)
    eval_steps: int = option(50, ge=1)  # inner steps on an evaluation task's support set (--eval-iters 50)
    eval_batch: int = option(5, ge=1)  # their batch (--eval-batch 5)
    queries: int = option(1, ge=1)  # query examples per class of an evaluation task (reference: 1)
    transductive: bool = True  # queries scored as one batch in training mode (--transductive)
    eval_episodes: int = option(100, ge=0)  # evaluation tasks per split for the reported accuracies (ours)
    held_out: int = option(4, ge=1)  # classes kept out of meta-training (entry's check: 4 of Fashion-MNIST's 10)


def dsd_rate(it: int, sparse_iter: int, retrain_iter: int, rate: float) -> float | None:
    """DSD's rate at meta-iteration ``it``: ``rate`` in ``[sparse_iter, retrain_iter)``, else None (dense)."""
    return rate if sparse_iter <= it < retrain_iter else None


def iht_rates(init_rate: float, compress_rate: float, n_intervals: int) -> list[float]:
    """IHT's rate of each interval: ``linspace(init_rate, compress_rate, n_intervals)`` (the reference's
    ``init_rate + k (compress_rate - init_rate) / (n_intervals - 1)``).

    Example:
        >>> [round(r, 4) for r in iht_rates(0.1, 0.3, 4)]
        [0.1, 0.1667, 0.2333, 0.3]
    """
    return torch.linspace(init_rate, compress_rate, n_intervals, dtype=torch.float64).tolist()


def iht_rate(it: int, sparse_iter: int, interval: int, ratio: float, rates: list[float]) -> float | None:
    """IHT's rate at ``it``: the current interval's rate during its first ``ratio`` fraction, else None."""
    if it < sparse_iter:
        return None
    k, pos = divmod(it - sparse_iter, interval)
    return rates[min(k, len(rates) - 1)] if pos < ratio * interval else None


class SparsePhases(Callback):
    """Hard magnitude masks switched at epoch boundaries (a meta-iteration in :class:`Reptile`, an epoch in
    :func:`~prunekit.train.fit`): ``rate_at(epoch)`` gives the rate of that epoch or None (dense);
    ``new_mask_at(epoch)`` says when to threshold again (otherwise a sparse epoch keeps the current mask).

    Per pruned layer the mask keeps the ``1 - rate`` largest |w| (the rate-quantile threshold of the paper).
    Records the masked epochs, the masks computed, the largest |w| under a mask seen at the end of a masked
    epoch (0 when the sparse phase holds) and the realised fraction of zeros in the pruned layers.
    """

    def __init__(self, model, fqns, rate_at, new_mask_at):
        self.model, self.fqns, self.rate_at, self.new_mask_at = model, list(fqns), rate_at, new_mask_at
        self.masked_epochs = self.masks_computed = 0
        self.max_masked_abs = 0.0
        self.realised = []  # [(epoch, rate asked, fraction zero in the pruned layers)]

    def _threshold(self, rate: float) -> None:
        params = {f: self.model.get_parameter(f) for f in self.fqns}
        masks = select_masks({f: p.detach().abs() for f, p in params.items()}, get_pattern("element"),
                             {f: rate for f in params})
        install_masks_(self.model, masks, mode="hard")  # pruned weights set to 0 now, kept at 0 by the hooks
        self.masks_computed += 1

    def on_epoch_start(self, state) -> None:
        rate, masked = self.rate_at(state.epoch), bool(get_masks(self.model))
        if rate is None:
            if masked:
                remove_masks_(self.model)  # dense again: pruned weights restart from 0
        elif not masked or self.new_mask_at(state.epoch):
            self._threshold(rate)

    def on_epoch_end(self, state) -> None:
        masks = get_masks(self.model)
        if not masks:
            return
        self.masked_epochs += 1
        with torch.no_grad():
            off = [self.model.get_parameter(f)[~m] for f, m in masks.items()]
            self.max_masked_abs = max(self.max_masked_abs, max(float(t.abs().max()) if t.numel() else 0.0 for t in off))
            zeros = sum(int((self.model.get_parameter(f) == 0).sum()) for f in self.fqns)
        self.realised.append((state.epoch, self.rate_at(state.epoch), zeros / sum(m.numel() for m in masks.values())))


def _schedule(cfg: ReptileDSDConfig, rate: float):
    """(rate_at, new_mask_at, rates) of the configured variant."""
    start = cfg.sparse_iter if cfg.sparse_iter is not None else (30000 if cfg.variant == "dsd" else 20000)
    if cfg.variant == "dsd":
        return (lambda it: dsd_rate(it, start, cfg.retrain_iter, rate)), (lambda it: it == start), [rate]
    n = max(1, math.ceil((cfg.iterations - start) / cfg.sparse_interval))
    rates = iht_rates(cfg.init_rate, rate, n) if n > 1 else [rate]
    return ((lambda it: iht_rate(it, start, cfg.sparse_interval, cfg.ratio, rates)),
            (lambda it: it >= start and (it - start) % cfg.sparse_interval == 0), rates)


@register_method("reptile-dsd", config=ReptileDSDConfig, kind="unstructured", needs=("train",), status="partial",
                 left_out="no row on the fair `prunekit bench` protocol (its measure is few-shot accuracy on held-out "
                          "classes, which bench does not compute); the entry's check ran only at a reduced scale "
                          "(benchmarks/reptile_check.py: 14x14 images, Conv-4-32, 200 meta-iterations, one run "
                          "per class split)",
                 telemetry=Telemetry(keys=("sparse_iterations", "masks_computed", "max_masked_abs",
                                           "realised_sparsity"),
                                     engaged=lambda t: t["sparse_iterations"] >= 1 and t["max_masked_abs"] == 0.0,
                                     what="meta-training restricted to a sparse sub-network (meta-iterations run "
                                          "under a magnitude mask, masked weights exactly 0)",
                                     knob="raise options.iterations above options.sparse_iter (the first mask is "
                                          "computed at meta-iteration sparse_iter)"),
                 smoke={"iterations": 3, "sparse_iter": 1, "retrain_iter": 3, "train_shots": 2, "inner_steps": 2,
                        "inner_batch": 5, "meta_batch": 2, "eval_episodes": 1, "eval_steps": 2})
def run(ctx: RunContext, cfg: ReptileDSDConfig) -> MethodResult:
    """Reptile over tasks of the meta-training classes, with the variant's dense/sparse phases."""
    images, labels = gather(ctx.train_data)
    split = split_classes(labels, cfg.held_out, ctx.seed)
    if cfg.ways > len(split.train):
        raise ConfigError(f"ways={cfg.ways}: only {len(split.train)} classes are left for meta-training after "
                          f"held_out={cfg.held_out}; lower ways or held_out")
    fqns = list(prunable_weights(ctx.model, ctx.ignore, exempt=("first",)))  # reference: first conv stays dense
    rate_at, new_mask_at, rates = _schedule(cfg, ctx.target_value)
    phases = SparsePhases(ctx.model, fqns, rate_at, new_mask_at)
    reptile = Reptile(ctx.model, ways=cfg.ways, inner_steps=cfg.inner_steps, inner_batch=cfg.inner_batch,
                      inner_lr=cfg.inner_lr, callbacks=[phases], device=ctx.device, seed=ctx.seed)
    train_tasks = EpisodeSampler(images, labels, split.train, ways=cfg.ways, seed=ctx.seed)
    history = reptile.train(train_tasks, iterations=cfg.iterations, meta_batch=cfg.meta_batch, shots=cfg.train_shots,
                            meta_step=cfg.meta_step, meta_step_final=cfg.meta_step_final)
    reptile.end()
    info = {"classes": {"meta_train": list(split.train), "held_out": list(split.test)}, "rates": rates,
            "phases": [[it, r, z] for it, r, z in phases.realised[:: max(1, len(phases.realised) // 20)]],
            "final_displacement": history[-1]["displacement"] if history else None,
            "ends_sparse": bool(get_masks(ctx.model))}
    if cfg.eval_episodes:
        # test tasks: every held-out class, topped up with meta-train classes when fewer than ways (entry's check)
        test_tasks = EpisodeSampler(images, labels, split.train if len(split.test) < cfg.ways else split.test,
                                    ways=cfg.ways, always=split.test if len(split.test) < cfg.ways else (),
                                    seed=ctx.seed + 1)
        kw = dict(episodes=cfg.eval_episodes, shots=cfg.shots, queries=cfg.queries, steps=cfg.eval_steps,
                  batch=cfg.eval_batch, transductive=cfg.transductive)
        info["meta_train_accuracy"] = reptile.few_shot_accuracy(EpisodeSampler(images, labels, split.train,
                                                                               ways=cfg.ways, seed=ctx.seed + 2), **kw)
        info["meta_test_accuracy"] = reptile.few_shot_accuracy(test_tasks, **kw)
        info["gap"] = info["meta_train_accuracy"] - info["meta_test_accuracy"]
    telemetry = {"sparse_iterations": phases.masked_epochs, "masks_computed": phases.masks_computed,
                 "max_masked_abs": phases.max_masked_abs,
                 "realised_sparsity": max((z for _, _, z in phases.realised), default=0.0)}
    return MethodResult(ctx.model, info=info, telemetry=telemetry)
