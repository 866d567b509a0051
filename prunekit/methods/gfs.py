"""GFS: greedy forward selection of filters -- grow each layer from empty, adding the filter that lowers the loss most.

Paper: Mao Ye, Chengyue Gong, Lizhen Nie, Denny Zhou, Adam Klivans, Qiang Liu, "Good Subnetworks Provably Exist:
Pruning via Greedy Forward Selection", ICML 2020 (published as "Network Pruning by Greedy Subnetwork
Selection"). https://arxiv.org/abs/2003.01794 (reference code, read to understand:
github.com/lushleaf/Network-Pruning-Greedy-Forward-Selection, ``mobile2_prune.py``).

Most pruning methods start from the full network and remove what looks least important. GFS goes the other
way: it starts each layer from the *empty* set and adds neurons (filters) one at a time, each time the one
whose addition gives the lowest loss on a fresh mini-batch, among up to ``num_evaluate`` candidates drawn from
those not yet selected. The layer's output is a convex combination of the selected neurons (Frank-Wolfe with
step size 1/(n+1): with n selected out of N, each reaches the next layer scaled by N/n, so the full selection is
the dense layer). A layer stops growing when the partially pruned network's training accuracy is back within
``tol`` of the dense network's (checked on held-out training batches once the mini-batch accuracy is within 5% of
it). Layers are processed from the input to the output, with a short fine-tune after each; the selected network
is then fine-tuned as a whole (the shared fine-tune). The paper proves that the greedy sub-network's loss
decreases quickly with its size, faster than that of a network of the same size trained directly.

Here every prunable channel group of the engine is a layer (channels joined by a residual add are one group);
a layer's width is also capped by the allocation of the MAC/parameter target (ours: the paper sets widths through
``tol`` alone, so a layer stops at its cap or at the tolerance, whichever comes first, and the result meets the
target); after its selection a layer is cut through the structural engine and fine-tuned for ``layer_finetune``
of an epoch (the paper: 0.1 epoch, lr 2.5e-3, weight decay 4e-5).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..api import plan_channels, prune_
from ..data import first_batches
from ..graph.trace import model_device, move_to
from ..train import fit
from ..train.config import method_train_config
from ._config import MethodConfig, option
from ._filter_common import _graph, filter_groups, removal_counts
from ._regularizers import channel_slices
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["GFSConfig", "ConsumerScaling", "greedy_select", "run"]


@dataclass(frozen=True)
class GFSConfig(MethodConfig):
    num_evaluate: int = option(50, ge=1)  # candidates tried per addition (reference code: num_evaluate = 50)
    tol: float | None = option(0.02, ge=0, lt=1)  # stop a layer at (1 - tol) x the dense training accuracy (paper:
    # 0.02); None: grow every layer to its width cap (ours: equal widths for comparisons)
    check_window: float = option(0.05, ge=0, le=1)  # the tolerance is checked once the mini-batch accuracy is within
    # this of the dense one (reference code: 5%)
    eval_batches: int = option(4, ge=1)  # ours: held-out training batches the tolerance check is measured on
    combination: Literal["convex", "mask"] = "convex"  # convex: selected neurons scaled by N/n (Frank-Wolfe, sec. 3);
    # "mask": plain 0/1 selection (ours, the ablation)
    allocation: Literal["uniform", "global"] = "uniform"  # ours: the per-layer width cap that meets the target
    layer_finetune: float = option(0.1, ge=0)  # epochs of fine-tune after each layer (paper: 0.1; 0 = off)
    layer_lr: float = option(2.5e-3, gt=0)  # lr of that fine-tune (paper: 2.5e-3)
    layer_weight_decay: float = option(4e-5, ge=0)  # its weight decay (paper: 4e-5)


class ConsumerScaling:
    """Shows a layer as if only ``selected`` of its ``width`` channels existed: every layer reading the channels
    (the group's consumers) sees channel c scaled by ``N/n`` (convex combination) or 1 (mask) when selected and 0
    otherwise. ``restore()`` puts the original weights back."""

    def __init__(self, model, group, width: int, convex: bool = True):
        self.slices = channel_slices(model, group, roles=("consumer",))
        self.orig = [p.detach().clone() for p, _, _ in self.slices]
        self.width, self.convex = width, convex

    @torch.no_grad()
    def set(self, selected) -> None:
        scale = torch.zeros(self.width + 1, dtype=torch.float64)  # the last slot serves positions of channel -1
        scale[-1] = 1.0
        if len(selected):
            w = self.width / len(selected) if self.convex else 1.0
            scale[torch.as_tensor(list(selected), dtype=torch.long)] = w
        for (p, dim, chan), w0 in zip(self.slices, self.orig):
            s = scale[chan].to(w0)
            p.copy_(w0 * s.view([-1 if i == dim else 1 for i in range(w0.dim())]))

    @torch.no_grad()
    def restore(self) -> None:
        for (p, _, _), w0 in zip(self.slices, self.orig):
            p.copy_(w0)


@torch.no_grad()
def _loss_acc(model, x, y) -> tuple[float, float]:
    out = model(x)
    return float(F.cross_entropy(out, y)), float((out.argmax(1) == y).float().mean())


@torch.no_grad()
def _accuracy(model, batches) -> float:
    dev = model_device(model)
    hit = n = 0
    for x, y in batches:
        out = model(move_to(x, dev))
        hit += int((out.argmax(1) == y.to(dev)).sum())
        n += len(y)
    return hit / max(n, 1)


def greedy_select(model, scaling: ConsumerScaling, batches, cap: int, num_evaluate: int, generator: torch.Generator,
                  stop=None) -> tuple[list, list]:
    """Grow one layer's selection from empty: each step draws the next mini-batch of ``batches`` (cycling),
    tries up to ``num_evaluate`` unselected channels and keeps the one with the lowest loss; stops at ``cap``
    channels or when ``stop(selected, batch_accuracy)`` says so. Returns (selected in order, loss after each)."""
    width, selected, curve = scaling.width, [], []
    dev = model_device(model)
    step = 0
    while len(selected) < cap:
        x, y = batches[step % len(batches)]
        x, y = move_to(x, dev), y.to(dev)
        step += 1
        rest = [c for c in range(width) if c not in set(selected)]
        if len(rest) > num_evaluate:
            rest = [rest[i] for i in torch.randperm(len(rest), generator=generator)[:num_evaluate].tolist()]
        best = None
        for c in rest:
            scaling.set(selected + [c])
            loss, acc = _loss_acc(model, x, y)
            if best is None or loss < best[0]:
                best = (loss, acc, c)
        selected.append(best[2])
        curve.append(best[0])
        if stop is not None and stop(selected, best[1]):
            break
    scaling.set(selected)
    return selected, curve


def _engaged(t: dict) -> bool:
    """Some addition chose among several candidates, and some layer's loss fell as it grew."""
    curves = [c for c in t["loss_curve"].values() if len(c) >= 2]
    additions = sum(len(c) for c in t["loss_curve"].values())
    return t["evaluated"] > additions and any(c[-1] < c[0] for c in curves)


@register_method(
    "gfs", config=GFSConfig, kind="structured", needs=("train", "val"), status="partial",
    left_out="widths from the tolerance alone: every layer is also capped at its width in the target's allocation "
             "(options.allocation) so the result meets the MAC/parameter target; the paper tunes tol to reach a "
             "FLOPs level instead",
    smoke={"num_evaluate": 4, "layer_finetune": 0.0, "eval_batches": 1},
    telemetry=Telemetry(
        keys=("loss_curve", "selected", "widths", "evaluated", "stopped_by_tol"), engaged=_engaged,
        what="greedy forward selection whose additions lowered the mini-batch loss",
        knob="raise options.num_evaluate (candidates per addition) or ask for a smaller target (each layer is "
             "grown up to its width cap)"))
def run(ctx: RunContext, cfg: GFSConfig) -> MethodResult:
    model = ctx.model
    groups = filter_groups(model, ctx)
    order = [g.key for g in groups]
    dense_widths = {g.key: g.width for g in groups}
    removed = removal_counts(model, ctx, {g.key: torch.ones(g.width) for g in groups}, cfg.allocation)
    caps = {k: dense_widths[k] - removed.get(k, 0) for k in order}
    train = first_batches(ctx.train_data, 10_000)
    check = first_batches(ctx.val_data, cfg.eval_batches)
    gen = torch.Generator().manual_seed(ctx.seed)
    was_training = model.training
    model.eval()
    dense_acc = _accuracy(model, check)
    dense_batch_acc = sum(_loss_acc(model, move_to(x, model_device(model)), y.to(model_device(model)))[1]
                          for x, y in train[: cfg.eval_batches]) / max(1, min(len(train), cfg.eval_batches))
    curves, selected_n, by_tol, evaluated = {}, {}, [], 0
    ft_batches = int(math.ceil(cfg.layer_finetune * len(train))) if cfg.layer_finetune else 0
    for key in order:
        group = next(g for g in filter_groups(model, ctx, _graph(model, ctx)) if g.key == key)
        scaling = ConsumerScaling(model, group.group, group.width, convex=cfg.combination == "convex")
        stopped = []

        def stop(sel, batch_acc):
            if cfg.tol is None or batch_acc < dense_batch_acc - cfg.check_window:
                return False
            ok = _accuracy(model, check) >= (1 - cfg.tol) * dense_acc
            if ok:
                stopped.append(len(sel))
            return ok

        model.eval()
        sel, curve = greedy_select(model, scaling, train, caps[key], cfg.num_evaluate, gen, stop)
        evaluated += sum(min(cfg.num_evaluate, group.width - i) for i in range(len(sel)))
        curves[key], selected_n[key] = curve, len(sel)
        if stopped:
            by_tol.append(key)
        cut = sorted(set(range(group.width)) - set(sel))
        if cut:  # the consumers keep their N/n scaling; the unselected channels leave the network
            prune_(model, plan_channels(model, ctx.example_inputs, {key: cut}, ignore=list(ctx.ignore)))
        if ft_batches:
            fit(model, train[:ft_batches], method_train_config(ctx, epochs=1, lr=cfg.layer_lr,
                                                               weight_decay=cfg.layer_weight_decay))
    model.train(was_training)
    widths = {g.key: g.width for g in filter_groups(model, ctx)}
    telemetry = {"loss_curve": curves, "selected": selected_n, "widths": widths, "evaluated": evaluated,
                 "stopped_by_tol": by_tol}
    log.info("gfs: widths %s (dense %s), %d candidate evaluations", widths, dense_widths, evaluated)
    return MethodResult(model=model, telemetry=telemetry, info={
        "dense_widths": dense_widths, "caps": caps, "dense_train_accuracy": dense_acc,
        "layer_finetune_batches": ft_batches})
