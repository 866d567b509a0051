"""DCP: channels chosen greedily by the gradient of a reconstruction + auxiliary-classification loss.

Paper: Zhuangwei Zhuang, Mingkui Tan, Bohan Zhuang, Jing Liu, Yong Guo, Qingyao Wu, Junzhou Huang, Jinhui Zhu,
"Discrimination-aware Channel Pruning for Deep Neural Networks", NeurIPS 2018. https://arxiv.org/abs/1810.11809

Reconstruction methods keep the channels that best reproduce a layer's output, even where that output carries
little of what separates the classes. DCP adds what the layer contributes to classification: P auxiliary
classifiers are placed evenly along the pre-trained network, and the network is pruned stage by stage. In
stage p the whole network is first fine-tuned with head p's cross-entropy L_S^p plus the final loss (this also
trains the head); then, for each layer l of the stage, the input channels are chosen greedily for
L = L_M + lambda * L_S^p, where L_M = 1/(2Q) ||O_baseline - O||^2 is the reconstruction error of the layer's
output against the original network. Starting from no channel, each step adds the channel whose weights have
the largest Frobenius gradient norm of L, then updates the weights of the chosen channels by SGD with the
others held at zero; this stops when the layer keeps its quota. Removing input channel k of a layer is
removing filter k of the layer that produces it; the last stage uses the final loss as its L_S.

Here the layers are those whose input channels have one producer and one reader (a Conv2d or a Linear):
every conv of a plain chain, and the inner channels of each residual block (the paper prunes the same ones;
channels of the residual sum are kept). The quota is the same kept fraction in every pruned layer (the paper's
uniform rate), found by the one allocator so the model meets ``macs=`` / ``params=``; each stage's selection
is cut by the engine before the next stage starts. The stage fine-tunes share ``prune_epochs`` epochs of
training batches between them. The heads are :class:`prunekit.models.heads.AuxClassifiers`; the baseline
features come from :class:`prunekit.criteria.teacher.Teacher`. Not reproduced: DCP-Adapt (the epsilon
stopping rule that lets each layer choose its own width).

Telemetry: the greedy selections made, the fraction of them the reconstruction term alone would have made
differently (the discrimination term decided them), the auxiliary heads' accuracy on the selection subset,
and the loss L at the start and end of the selections. The mechanism engaged when the discrimination term
changed at least one selection.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..api import plan_channels, prune_
from ..criteria.teacher import Teacher
from ..data import first_examples
from ..errors import ConfigError
from ..graph.tensors import model_device, move_to
from ..models.heads import AuxClassifiers, WithAux, evenly_spaced
from ..train import fit
from ..train.config import method_train_config
from ..train.loop import output_logits
from ._config import MethodConfig, option
from ._filter_common import (FilterGroup, _graph, filter_groups, require_prune_epochs, select_to_target,
                             steps_per_epoch)
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["DCPConfig", "dcp_layers", "greedy_select", "run"]


@dataclass(frozen=True)
class DCPConfig(MethodConfig):
    heads: int = option(3, ge=0)  # auxiliary classifiers P (paper sec. 4: 3 for ResNet-56/50, 2 for VGG and
    # ResNet-18; reference cifar10_resnet.hocon n_losses=3); capped at the number of pruned layers - 1
    lam: float = option(1.0, ge=0)  # weight of the auxiliary loss L_S^p against L_M (paper sec. 3.2: lambda = 1;
    # reference softmax_weight=1.0, mse_weight=1.0); 0 = reconstruction-only selection
    layer_lr: float = option(0.01, gt=0)  # SGD step of the per-layer subproblem (reference layer_wise_lr=0.01)
    momentum: float = option(0.9, ge=0, lt=1)  # of that SGD (ours: the paper's SGD momentum 0.9 for fine-tuning)
    select_images: int = option(10000, ge=1)  # training images the selection reads (paper sec. 4: a random
    # subset of 10k images on ImageNet); each added channel: one gradient pass, one SGD pass over them


@dataclass
class DCPLayer:
    """One pruned layer: the group of channels, the layer that produces them and the one that reads them."""

    group: FilterGroup
    producer: str
    reader: str


def dcp_layers(model: nn.Module, ctx) -> list[DCPLayer]:
    """The groups DCP prunes, in forward order: one producing Conv2d/Linear and one reading Conv2d (groups=1)
    or Linear whose input channels are the group's channels one to one."""
    import numpy as np

    mods = dict(model.named_modules())
    order = {n: i for i, n in enumerate(mods)}
    out = []
    for g in filter_groups(model, ctx):
        if len(g.convs) != 1 or len(g.bns) > 1:
            continue  # a residual sum: several producers (kept whole, as in the paper)
        readers = [m for m in g.group.members if m.role == "consumer" and m.fqn.endswith(".weight") and m.dim == 1]
        if len(readers) != 1 or not np.array_equal(readers[0].channel, np.arange(g.width)):
            continue
        reader = readers[0].fqn.rpartition(".")[0]
        mod = mods.get(reader)
        if isinstance(mod, nn.Conv2d) and mod.groups == 1 or isinstance(mod, nn.Linear):
            out.append(DCPLayer(g, g.convs[0], reader))
    return sorted(out, key=lambda d: order[d.reader])


class _Capture:
    """Keeps the last output of a module (with its graph) while attached."""

    def __init__(self, module: nn.Module):
        self.out = None
        self.handle = module.register_forward_hook(lambda _m, _i, o: setattr(self, "out", o))

    def remove(self):
        self.handle.remove()


def _channel_norms(grad: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of each input channel's slice of a weight gradient (dim 1)."""
    return grad.transpose(0, 1).reshape(grad.shape[1], -1).norm(dim=1)


def greedy_select(model: nn.Module, reader: str, keep: int, batches, teacher: nn.Module,
                  class_logits: Callable, *, lam: float = 1.0, lr: float = 0.01, momentum: float = 0.9) -> dict:
    """DCP's greedy channel selection (Algorithm 2) for the input channels of layer ``reader`` of ``model``.

    ``teacher`` is the original network (same module names); ``class_logits(model_output)`` gives the logits of
    the classifier whose cross-entropy is L_S (an auxiliary head's, or the model's own). Starting from no
    channel (every input weight of ``reader`` at zero), ``keep`` times: add the unselected channel with the
    largest ``||dL/dW_k||_F`` for ``L = L_M + lam * L_S`` (``W_k`` warm-started from its weights before the
    selection), then one SGD pass over ``batches`` on the selected channels' weights. ``reader``'s weight
    is left with the unselected input channels at zero. Returns ``{"selected", "loss", "differs"}``: the
    channels in the order chosen, L before the first and after each step, and for each step whether the
    reconstruction term alone would have chosen another channel. The model is in eval mode throughout;
    only ``reader.weight`` changes.
    """
    mods, tmods = dict(model.named_modules()), dict(teacher.named_modules())
    layer, w = mods[reader], mods[reader].weight
    width = w.shape[1]
    if not 1 <= keep <= width:
        raise ConfigError(f"greedy_select: keep={keep} must be in [1, {width}] (the input channels of {reader!r})")
    w0 = w.detach().clone()
    mask = torch.zeros(width, dtype=torch.bool, device=w.device)
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    was = model.training
    student_out, teacher_out = _Capture(layer), _Capture(tmods[reader])
    model.eval()
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        w.requires_grad_(True)
        with torch.no_grad():
            w.zero_()
        opt = torch.optim.SGD([w], lr=lr, momentum=momentum)

        def losses(x, y):
            x, y = move_to(x, w.device), move_to(y, w.device)
            with torch.no_grad():
                teacher(x)
            out = model(x)
            rec = 0.5 * F.mse_loss(student_out.out, teacher_out.out)  # 1/(2Q) ||O_b - O||^2
            return rec, F.cross_entropy(class_logits(out), y)

        def gradients():
            g_m, g_s, total, n = torch.zeros_like(w), torch.zeros_like(w), 0.0, 0
            for x, y in batches:
                rec, cls = losses(x, y)
                a, = torch.autograd.grad(rec, w, retain_graph=True, allow_unused=True)
                b, = torch.autograd.grad(cls, w, allow_unused=True)
                g_m += 0 if a is None else a * len(x)
                g_s += 0 if b is None else b * len(x)
                total += float((rec + lam * cls).detach()) * len(x)
                n += len(x)
            return g_m / n, g_s / n, total / n

        selected, trace, differs = [], [], []
        for _ in range(keep):
            g_m, g_s, value = gradients()
            trace.append(value)
            score, recon = _channel_norms(g_m + lam * g_s), _channel_norms(g_m)
            score[mask], recon[mask] = -1.0, -1.0
            k = int(torch.argmax(score))
            differs.append(k != int(torch.argmax(recon)))
            selected.append(k)
            mask[k] = True
            with torch.no_grad():
                w[:, k] = w0[:, k]
            for x, y in batches:  # the subproblem: SGD on the selected channels' weights only
                rec, cls = losses(x, y)
                opt.zero_grad()
                (rec + lam * cls).backward()
                w.grad[:, ~mask] = 0
                opt.step()
                with torch.no_grad():
                    w[:, ~mask] = 0
        trace.append(gradients()[2])
    finally:
        student_out.remove()
        teacher_out.remove()
        w.grad = None
        for p, flag in frozen:
            p.requires_grad_(flag)
        model.train(was)
    return {"selected": selected, "loss": trace, "differs": differs}


class _Batches:
    """``n`` batches of ``data`` starting at batch ``start`` (cycling over it): one stage's share of training."""

    def __init__(self, data, start: int, n: int):
        self.data, self.start, self.n = data, start, n

    def __len__(self):
        return self.n

    def __iter__(self):
        size = len(self.data)
        it = itertools.chain.from_iterable(iter(self.data) for _ in range((self.start + self.n) // size + 1))
        return itertools.islice(it, self.start, self.start + self.n)


@torch.no_grad()
def _accuracy(model: nn.Module, batches, class_logits: Callable) -> float:
    was = model.training
    model.eval()
    try:
        dev = model_device(model)
        right = sum(int((class_logits(model(move_to(x, dev))).argmax(-1) == move_to(y, dev)).sum())
                    for x, y in batches)
    finally:
        model.train(was)
    return right / max(1, sum(len(y) for _, y in batches))


@register_method(
    "dcp", config=DCPConfig, kind="structured", needs=("train",), status="partial",
    smoke={"select_images": 32, "heads": 1},
    left_out="DCP-Adapt (the epsilon stopping rule choosing each layer's width); channels of a residual sum are "
             "kept whole, as in the paper's ResNet experiments",
    telemetry=Telemetry(
        keys=("selections", "discrimination_differs", "aux_accuracy", "loss_start", "loss_end"),
        engaged=lambda t: t["selections"] >= 1 and t["discrimination_differs"] > 0,
        what="channel selections decided by the discrimination-aware (auxiliary cross-entropy) term",
        knob="raise options.lam (weight of the auxiliary classification loss; 0 = reconstruction only) or "
             "prune_epochs (the stage fine-tunes that train the auxiliary heads)"))
def run(ctx: RunContext, cfg: DCPConfig) -> MethodResult:
    require_prune_epochs(ctx, "dcp")
    model = ctx.model
    layers = dcp_layers(model, ctx)
    if not layers:
        raise ConfigError(f"model={type(model).__name__}: dcp found no layer whose input channels have one producer "
                          f"and one Conv2d/Linear reader; prune a plain conv chain or residual blocks")
    graph = _graph(model, ctx)
    groups = [d.group for d in layers]
    sel, alloc = select_to_target(model, ctx, {d.producer: torch.ones(d.group.width) for d in layers}, "uniform",
                                  groups=groups, graph=graph)  # the paper's same rate in every layer
    quota = {d.producer: d.group.width - len(sel.get(d.group.key, ())) for d in layers}
    with torch.no_grad():
        was = model.training
        n_classes = output_logits(model.eval()(move_to(ctx.example_inputs, model_device(model)))).shape[-1]
        model.train(was)
    teacher = Teacher(model)
    subset = first_examples(ctx.train_data, cfg.select_images)
    readers = [d.reader for d in layers]
    heads = evenly_spaced(readers, cfg.heads)
    bounds = [readers.index(h) + 1 for h in heads] + [len(readers)]
    stages = [layers[a:b] for a, b in zip([0] + bounds[:-1], bounds)]
    per_stage = max(1, ctx.prune_epochs * steps_per_epoch(ctx.train_data) // len(stages))
    selections, differs, aux_acc, first, last, removed_total = 0, 0, [], [], [], 0
    for p, stage in enumerate(stages):
        aux = AuxClassifiers(model, [heads[p]], n_classes, ctx.example_inputs) if p < len(heads) else None
        try:
            if aux is not None:
                logits = lambda out, aux=aux, f=heads[p]: aux.logits[f]  # noqa: E731
                net = WithAux(model, aux)
                stage_loss = lambda out, y, aux=aux, f=heads[p]: (  # noqa: E731
                    F.cross_entropy(out, y) + F.cross_entropy(aux.logits[f], y))
            else:
                logits, net, stage_loss = output_logits, model, None
            fit(net, _Batches(ctx.train_data, p * per_stage, per_stage), method_train_config(ctx, epochs=1),
                loss_fn=stage_loss)  # L_S^p + L_f (the last stage: L_f alone)
            aux_acc.append(_accuracy(model, subset, logits))
            chosen = {}
            for d in stage:
                r = greedy_select(model, d.reader, quota[d.producer], subset, teacher.model, logits, lam=cfg.lam,
                                  lr=cfg.layer_lr, momentum=cfg.momentum)
                selections += len(r["selected"])
                differs += sum(r["differs"])
                first.append(r["loss"][0])
                last.append(r["loss"][-1])
                chosen[d.producer] = sorted(set(range(d.group.width)) - set(r["selected"]))
        finally:
            if aux is not None:
                aux.remove()
        chosen = {k: v for k, v in chosen.items() if v}
        if chosen:
            removed_total += sum(len(v) for v in chosen.values())
            prune_(model, plan_channels(model, ctx.example_inputs, chosen, ignore=list(ctx.ignore)))
    del teacher
    mean = lambda v: float(sum(v) / len(v)) if v else 0.0  # noqa: E731
    telemetry = {"selections": selections, "discrimination_differs": differs / max(1, selections),
                 "aux_accuracy": mean(aux_acc), "loss_start": mean(first), "loss_end": mean(last)}
    info = {"stages": [[d.producer for d in s] for s in stages], "heads": heads, "kept": quota,
            "aux_accuracy_per_stage": aux_acc, "removed_channels": removed_total, "allocation": alloc}
    return MethodResult(model=model, telemetry=telemetry, info=info)
