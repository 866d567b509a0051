"""First-order Taylor criteria: ``taylor`` (Molchanov et al. 2019) and ``taylor-act`` (Molchanov et al. 2017).

Pavlo Molchanov, Stephen Tyree, Tero Karras, Timo Aila, Jan Kautz, "Pruning Convolutional Neural Networks
for Resource Efficient Inference", ICLR 2017, https://arxiv.org/abs/1611.06440: the loss change when a
feature map is zeroed is estimated to first order by ``|mean(a * dL/da)|`` over batch and positions, then
each layer's vector is scaled to unit l2 norm so layers can be ranked together.
Pavlo Molchanov, Arun Mallya, Stephen Tyree, Iuri Frosio, Jan Kautz, "Importance Estimation for Neural
Network Pruning", CVPR 2019, https://arxiv.org/abs/1906.10771: the squared first-order estimate
``(g * dL/dg)^2`` of a gate ``g`` placed after BatchNorm, which for a parameter group is
``(sum_s w_s dL/dw_s)^2``; ranked globally without normalisation.

Both are computed from the calibration gradients the engine accumulates. For a layer ``y = W a`` (conv or
linear) ``sum W * dL/dW = sum a * dL/da`` over every sample and position, so a consumer member's
``sum_rest w * grad`` is exactly the activation-times-gradient sum of the channel as that layer reads it
(after BN, ReLU and pooling), and a BatchNorm scale's ``gamma * dL/dgamma`` is exactly the gate-after-BN
term. ``taylor`` squares each calibration batch's estimate and averages over batches, as the 2019 paper
averages over mini-batches (it keeps one gradient copy per batch: memory = batches x model); ``taylor-act``
uses the gradient summed over the calibration batches.

Through the engine these per-member scores are averaged over a group's members after normalising each by
its mean. The papers score one quantity per unit, which :func:`taylor_fo_scores` (the gate after BN, raw)
and :func:`taylor_fm_scores` (the next layer's input, per example, l2 per layer) compute per group; the
taylor-fo / taylor-fm methods rank with those.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._base import ChannelView, channel_rows, register_criterion
from ..graph.trace import call_model, model_device, move_to


def taylor_sum(view: ChannelView) -> torch.Tensor:
    """``sum_rest w * dL/dw`` per channel ``[n_channels]`` (zeros without gradients)."""
    if view.grad is None:
        return torch.zeros(view.n_channels, dtype=torch.float64)
    return (view.weight.double() * view.grad.double()).sum(1)


@register_criterion("taylor", needs=("batch_grads",))
def score_taylor(view: ChannelView) -> torch.Tensor:
    """``mean over batches b of (sum_rest w * dL_b/dw)^2`` per channel."""
    if not view.grad_batches:
        return taylor_sum(view).pow(2)
    w = view.weight.double()
    return torch.stack([(w * g.double()).sum(1).pow(2) for g in view.grad_batches]).mean(0)


@register_criterion("taylor-act", needs=("grads",))
def score_taylor_act(view: ChannelView) -> torch.Tensor:
    s = taylor_sum(view).abs()
    n = s.norm()
    return s / n if n > 0 else s


# ---- whole-group scores of the two papers (what the taylor-fo / taylor-fm methods rank by) ----------------
# The registered criteria above score one member at a time, and the engine then averages every member's
# mean-normalised score (a blend of the filter, its bias, the BN scale and shift and the next layer's slice).
# The papers score one quantity per unit: a gate after BatchNorm (2019) or the feature map as the next layer
# reads it (2017). These two functions compute exactly that per group, from their own calibration passes.


def _norm_modules():
    return (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def gate_members(model: nn.Module, group) -> list:
    """The parameter members a gate on the group's channels multiplies: the BatchNorm (or other norm)
    weight and bias when the group has one (the gate sits after BN), else the producing layers' weight and
    bias (the gate sits on the layer's output)."""
    mods = dict(model.named_modules())
    params = dict(model.named_parameters())
    owner = {m.fqn: mods.get(m.fqn.rpartition(".")[0]) for m in group.members}
    ok = [m for m in group.members if m.fqn in params and m.dim == 0]
    norms = [m for m in ok if isinstance(owner[m.fqn], _norm_modules())]
    if norms:
        return norms
    prods = {m.fqn.rpartition(".")[0] for m in group.producers}
    return [m for m in ok if m.fqn.rpartition(".")[0] in prods and m.fqn.rpartition(".")[2] in ("weight", "bias")]


def _loss(outputs, targets, reduction: str = "mean"):
    logits = getattr(outputs, "logits", outputs)
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction=reduction)


@contextlib.contextmanager
def _grad_pass(model: nn.Module):
    """Eval mode, the caller's ``.grad`` fields and train/eval flags restored afterwards."""
    saved = {p: p.grad for p in model.parameters()}
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        for p, g in saved.items():
            p.grad = g
        for m, t in modes.items():
            m.training = t


def taylor_fo_scores(model: nn.Module, graph, calib, loss_fn: Callable | None = None) -> list[np.ndarray]:
    """Molchanov et al. 2019, per group: ``mean over calibration batches b of (sum over the gate members
    of w * dL_b/dw)^2`` -- the squared first-order term of a gate after BatchNorm (``gamma dL/dgamma + beta
    dL/dbeta`` is ``sum over batch and positions of z * dL/dz`` for the BN output ``z``). Raw values, no
    normalisation: the paper ranks them across the whole network as they are."""
    params = dict(model.named_parameters())
    gates = [gate_members(model, g) for g in graph.groups]
    sums = [np.zeros(g.width) for g in graph.groups]
    loss_fn = loss_fn or _loss
    device = model_device(model)
    n = 0
    with _grad_pass(model):
        for x, y in calib:
            x, y = move_to((x, y), device)
            for p in params.values():
                p.grad = None
            loss_fn(call_model(model, x), y).backward()
            for gi, (g, members) in enumerate(zip(graph.groups, gates)):
                term = np.zeros(g.width)
                for m in members:
                    p = params[m.fqn]
                    if p.grad is None:
                        continue
                    chans, w = channel_rows(p.detach().cpu(), m.dim, m.channel)
                    _, gr = channel_rows(p.grad.detach().cpu(), m.dim, m.channel)
                    term[chans] += (w.double() * gr.double()).sum(1).numpy()
                sums[gi] += term ** 2
            n += 1
    return [s / max(n, 1) for s in sums]


def taylor_fm_scores(model: nn.Module, graph, calib, loss_fn: Callable | None = None) -> list[np.ndarray]:
    """Molchanov et al. 2017, per group: ``|(1/M) sum_m a_m dL/da_m|`` of each channel of the feature map
    as the next layer reads it (its input, after BN, ReLU and pooling), computed for each example
    separately and averaged over the examples of every calibration batch, then the group's vector scaled
    to unit l2 norm. ``dL/da`` is the gradient of the example's own loss through that reader only (a
    residual stream read by several layers sums their terms)."""
    mods = dict(model.named_modules())
    readers: dict = {}  # module fqn -> [(group index, member)]
    for gi, g in enumerate(graph.groups):
        for m in g.members:
            mf, _, leaf = m.fqn.rpartition(".")
            mod = mods.get(mf)
            if m.role == "consumer" and leaf == "weight" and m.dim == 1 and isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                readers.setdefault(mf, []).append((gi, m))
    totals = [np.zeros(g.width) for g in graph.groups]
    seen: dict = {}
    examples = 0

    def pre_hook(mod, args, mf):
        x = args[0]
        if not (torch.is_tensor(x) and x.requires_grad):
            return None
        alias = x.view_as(x)  # a node of its own: its gradient flows through this reader only
        # the hook holds a detached copy, not the alias: a cycle alias -> hook -> alias would keep the graph,
        # and with it stale gradient accumulators of parameters the engine resizes later, alive
        alias.register_hook(lambda g, a=x.detach(), mf=mf: seen.__setitem__(mf, (a, g.detach())))
        return (alias, *args[1:])

    hooks = [mods[mf].register_forward_pre_hook(lambda mod, args, mf=mf: pre_hook(mod, args, mf))
             for mf in readers]
    device = model_device(model)
    try:
        with _grad_pass(model):
            for x, y in calib:
                x, y = move_to((x, y), device)
                seen.clear()
                (loss_fn or (lambda o, t: _loss(o, t, "sum")))(call_model(model, x), y).backward()
                per_example = [np.zeros((0, g.width)) for g in graph.groups]
                for mf, pairs in readers.items():
                    if mf not in seen:
                        continue
                    a, g = seen[mf]
                    feat = 1 if isinstance(mods[mf], (nn.Conv1d, nn.Conv2d, nn.Conv3d)) else a.dim() - 1
                    prod = (a.double() * g.double()).movedim(feat, 1)  # [N, C, ...]
                    prod = prod.reshape(prod.shape[0], prod.shape[1], -1).sum(2).cpu().numpy()  # [N, C]
                    positions = int(np.prod(a.shape[2:])) if feat == 1 else int(np.prod(a.shape[1:-1]))
                    for gi, m in pairs:
                        if m.size != prod.shape[1]:
                            continue  # a grouped conv reads a slice per group: no per-channel map here
                        valid = m.channel >= 0
                        count = np.bincount(m.channel[valid], minlength=graph.groups[gi].width)
                        term = np.zeros((prod.shape[0], graph.groups[gi].width))
                        np.add.at(term.T, m.channel[valid], prod[:, valid].T)
                        term /= np.maximum(count, 1) * max(positions, 1)  # mean over the map's positions
                        pe = per_example[gi]
                        per_example[gi] = term if not len(pe) else pe + term
                n_batch = max((len(pe) for pe in per_example), default=0)
                for gi, pe in enumerate(per_example):
                    if len(pe):
                        totals[gi] += np.abs(pe).sum(0)
                examples += n_batch
    finally:
        for h in hooks:
            h.remove()
    out = []
    for t in totals:
        t = t / max(examples, 1)
        nrm = np.linalg.norm(t)
        out.append(t / nrm if nrm > 0 else t)
    return out
