"""PackNet: several tasks in one network, each packed into the weights the earlier tasks' pruning set free.

Paper: Arun Mallya, Svetlana Lazebnik, "PackNet: Adding Multiple Tasks to a Single Network by Iterative
Pruning", CVPR 2018. https://arxiv.org/abs/1711.05769 (reference code: arunmallya/packnet, read to check the
schedule, not copied).

A trained network has many more weights than its task needs. PackNet trains the first task, removes a
fraction of each layer's weights by magnitude and retrains the rest briefly; the survivors now belong to
task 1 and are frozen. The next task gets a new classifier head and trains only the freed weights (the
frozen ones are used in its forward but never change; biases and BatchNorm stay as task 1 left them), is
pruned the same way among its own weights and retrained, and so on. At inference task ``k`` uses the
weights of tasks ``1..k`` (the others zeroed) and its own head, so every earlier task computes exactly what
it did when it was packed: no forgetting, at the price of a shrinking pool of free weights.

Here the ownership, per-task masks, heads and their safetensors form are the shared
:class:`~prunekit.masks.tasks.PackedNetwork`. ``run`` packs the task of ``ctx.train_data`` into
``ctx.model``: a plain model is task 1 (trained for ``ctx.prune_epochs`` epochs, its smallest weights per
layer released, ``retrain_epochs`` of retraining; the model is left with the released weights at zero); a
``PackedNetwork`` gets a new head and task. The fraction released is the target: ``sparsity=S`` frees ``S``
of the weights of the task being packed, in every Conv/Linear layer but the head. Frozen weights are
restored to their stored values after every optimizer step (so momentum or weight decay cannot move them),
which makes the bit-exact preservation of earlier tasks a property of the code, not of the optimizer.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..masks.tasks import PackedNetwork
from ..train import Callback, fit
from ..train.config import method_train_config
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["PackNetConfig", "run", "FreezeOwned", "release_smallest_", "pack_task_"]

_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class PackNetConfig(MethodConfig):
    retrain_epochs: int = option(10, ge=0)  # retraining after each prune (reference code run_sequence.sh: 10 epochs)
    retrain_lr: float = option(1e-4, gt=0)  # learning rate of that retraining (reference code: 1e-4)
    classes: int = option(0, ge=0)  # outputs of a new task's head; 0 = as many as the previous head (ours)
    head: str = ""  # FQN of the classifier replaced per task; "" = the last Linear of the model (ours)
    train_shared: bool = False  # later tasks also train biases and norm layers (paper sec. 3: frozen after task 1)


class FreezeOwned(Callback):
    """Trains only the backbone weights owned by ``task`` plus its head (claim free weights for it first).

    Everything else (other tasks' weights, earlier heads and, unless ``train_shared``, biases and norm layers
    with their running statistics) is put back to its value at construction after every optimizer step, and
    its gradient zeroed after backward; norm layers are kept in eval mode.
    """

    def __init__(self, packed: PackedNetwork, task: int, *, train_shared: bool = False):
        self.packed, self.task = packed, task
        owners = packed.owners
        bb = packed.backbone
        self.trainable = {f: o == task for f, o in owners.items()}
        shared = train_shared or task == 1
        self.norms = [] if shared else [m for m in bb.modules() if isinstance(m, _NORM)]
        heads = {id(p) for h in packed.heads.values() for p in h.parameters()}
        self.saved = []  # (tensor, value to restore, elements frozen or None for the whole tensor)
        for name, p in bb.named_parameters():
            if id(p) in heads:
                continue
            if name in self.trainable:
                self.saved.append((p, p.detach().clone(), ~self.trainable[name]))
            elif not shared:
                self.saved.append((p, p.detach().clone(), None))
        for j, h in packed.heads.items():
            if int(j) != task:
                self.saved += [(p, p.detach().clone(), None) for p in h.parameters()]
        if not shared:
            self.saved += [(b, b.detach().clone(), None) for b in bb.buffers()]

    def on_batch_start(self, state) -> None:
        for m in self.norms:
            m.eval()

    def on_after_backward(self, state) -> None:
        for p, _, frozen in self.saved:
            if p.grad is not None:
                if frozen is None:
                    p.grad = None
                else:
                    p.grad[frozen] = 0

    def on_after_step(self, state) -> None:
        with torch.no_grad():
            for p, value, frozen in self.saved:
                if frozen is None:
                    p.copy_(value)
                else:
                    p[frozen] = value[frozen]


def release_smallest_(packed: PackedNetwork, task: int, fraction: float) -> int:
    """Free ``fraction`` of task ``task``'s weights in every layer, the smallest ``|w|`` first; returns how many."""
    chosen = {}
    for f, o in packed.owners.items():
        own = o == task
        k = int(round(fraction * int(own.sum())))
        sel = torch.zeros_like(own)
        if k:
            w = packed.backbone.get_parameter(f).detach().abs()
            idx = torch.nonzero(own.flatten()).flatten()
            order = torch.sort(w.flatten()[idx], stable=True).indices[:k]
            sel.view(-1)[idx[order]] = True
        chosen[f] = sel
    return packed.release_(task, chosen)


def pack_task_(packed: PackedNetwork, ctx: RunContext, cfg: PackNetConfig, task: int) -> dict:
    """Train task ``task`` on the free weights, release ``ctx.target_value`` of them, retrain; returns counts."""
    claimed = packed.claim_free_(task)
    packed.task = task
    train = FreezeOwned(packed, task, train_shared=cfg.train_shared)  # the free weights were just claimed
    fit(packed, ctx.train_data, method_train_config(ctx), callbacks=[train])
    released = release_smallest_(packed, task, ctx.target_value)
    retrain = FreezeOwned(packed, task, train_shared=cfg.train_shared)
    if cfg.retrain_epochs:
        fit(packed, ctx.train_data, method_train_config(ctx, epochs=cfg.retrain_epochs, lr=cfg.retrain_lr),
            callbacks=[retrain])
    owned = sum(int((o == task).sum()) for o in packed.owners.values())
    free = sum(int((o == 0).sum()) for o in packed.owners.values())
    return {"task": task, "claimed": claimed, "released": released, "owned": owned, "free": free,
            "callback": retrain}


def _last_linear(model: nn.Module) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ConfigError(f"model={type(model).__name__}: packnet gives each task its own classifier head and "
                          f"found no Linear layer; name the head with options={{'head': '<fqn>'}}")
    return names[-1]


@register_method(
    "packnet", config=PackNetConfig, kind="unstructured", needs=("train",),
    smoke={"retrain_epochs": 1},
    telemetry=Telemetry(
        keys=("task", "released", "owned", "free", "earlier_tasks_changed"),
        engaged=lambda t: t["released"] > 0 and t["earlier_tasks_changed"] == 0,
        what="weights of the packed task released for later tasks while earlier tasks stay bit-identical",
        knob="raise the target sparsity (the fraction of the task's weights released)"))
def run(ctx: RunContext, cfg: PackNetConfig) -> MethodResult:
    if isinstance(ctx.prune_epochs, bool) or not isinstance(ctx.prune_epochs, int) or ctx.prune_epochs < 1:
        raise ConfigError(f"prune_epochs={ctx.prune_epochs!r}: packnet trains each task before pruning it; give "
                          f"prune_epochs >= 1")
    model = ctx.model
    if isinstance(model, PackedNetwork):
        packed = model
        task = packed.packed_tasks + 1
        if task > packed.num_tasks:
            packed.new_task(cfg.classes)
    else:
        packed = PackedNetwork(model, cfg.head or _last_linear(model))
        task = 1
    before = {f: (packed.backbone.get_parameter(f).detach().clone(), (o >= 1) & (o < task))
              for f, o in packed.owners.items()}
    counts = pack_task_(packed, ctx, cfg, task)
    changed = sum(int((packed.backbone.get_parameter(f).detach()[m] != w[m]).sum()) for f, (w, m) in before.items())
    packed.task = task
    if not isinstance(model, PackedNetwork):
        packed._set_head(1)
    retrain = counts.pop("callback")
    telemetry = {**counts, "earlier_tasks_changed": changed}
    log.info("packnet: task %d owns %d weights, released %d, %d free", task, counts["owned"], counts["released"],
             counts["free"])
    return MethodResult(model=model, telemetry=telemetry, callbacks=[retrain],
                        info={"epochs_trained": ctx.prune_epochs + cfg.retrain_epochs, "tasks": packed.num_tasks,
                              "head": packed.head})
