"""Scores per channel of every coupled group: the calibration run (``_collect``) and :func:`score_groups`,
which hands each group member to the registered criterion and reduces the members' scores per channel."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from .._checks import default_loss as _default_loss
from ..criteria import ChannelView, ConsumerView, channel_rows, get_criterion, reduce_scores, score_member
from ..errors import ConfigError
from ..graph import Graph
from ..graph.trace import call_model, model_device, move_to

__all__ = ["score_groups"]


def _module_of(fqn: str) -> str:
    return fqn.rpartition(".")[0]


def _collect(model, graph: Graph, calib, loss_fn, need_grads: bool, need_acts: bool, per_batch: bool = False):
    """Run ``calib`` once: summed grads per parameter fqn, producer outputs and module inputs; with
    ``per_batch`` also each batch's grads (``grads["<fqn>#batches"]``, a list; memory: batches x model)."""
    grads: dict = {}
    acts: dict = {}
    inputs: dict = {}
    if calib is None:
        raise ConfigError("this criterion needs calibration data: pass calib=[(inputs, targets), ...]")
    named = dict(model.named_modules())
    hooks = []
    if need_acts:
        owners = {_module_of(m.fqn) for g in graph.groups for m in g.members}
        for mf in owners:
            mod = named.get(mf)
            if mod is None:
                continue

            def hook(mod, args, out, mf=mf):  # statistics live on the CPU, where every criterion scores
                if isinstance(out, torch.Tensor):
                    acts.setdefault(mf, []).append(out.detach().cpu())
                t = next((a for a in args if isinstance(a, torch.Tensor)), None)
                if t is not None:
                    inputs.setdefault(mf, []).append(t.detach().cpu())

            hooks.append(mod.register_forward_hook(hook))
    saved = {id(p): p.grad for p in model.parameters()}
    params = dict(model.named_parameters())
    device = model_device(model)
    training = {m: m.training for m in model.modules()}
    model.eval()
    loss_fn = loss_fn or _default_loss
    try:
        for batch in calib:
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise ConfigError(f"calib must yield (inputs, targets) pairs, got {type(batch).__name__}")
            x, y = move_to(batch, device)  # calibration batches may sit on the CPU next to a GPU model
            if need_grads:
                for p in params.values():
                    p.grad = None
                with torch.enable_grad():
                    loss = loss_fn(call_model(model, x), y)
                    loss.backward()
                for f, p in params.items():
                    if p.grad is not None:
                        g = p.grad.detach().cpu()
                        grads[f] = grads[f] + g if f in grads else g.clone()
                        if per_batch:
                            grads.setdefault(f + "#batches", []).append(g.clone())
            else:
                with torch.no_grad():
                    call_model(model, x)
    finally:
        for h in hooks:
            h.remove()
        for p in model.parameters():
            p.grad = saved.get(id(p))
        for m, t in training.items():
            m.training = t
    return grads, acts, inputs


def _channel_first(out: torch.Tensor, module) -> torch.Tensor:
    """Output of a producing module as ``[channels, samples*positions]``: linear layers put features last,
    convolutions and norms at dim 1."""
    last = isinstance(module, (nn.Linear, nn.Embedding)) or type(module).__name__ == "Conv1D" or out.dim() < 3
    d = out.dim() - 1 if last else 1
    return out.movedim(d, 0).reshape(out.shape[d], -1)


def score_groups(model, graph: Graph, criterion: str, *, calib=None, loss_fn=None, reduce="group", seed=0,
                 scorer=None):
    """One score per channel of every group (list aligned with ``graph.groups``).

    ``scorer``: a function ``view -> scores`` used instead of the criterion's registered one (with the
    criterion's needs), e.g. :func:`prunekit.criteria.nisp.scorer` of whole-network scores."""
    spec = get_criterion(criterion)
    if scorer is not None:
        spec = dataclasses.replace(spec, fn=scorer, fast=None)
    per_batch = "batch_grads" in spec.needs
    need_grads = "grads" in spec.needs or per_batch
    need_acts = "activations" in spec.needs
    grads, acts, inputs = ({}, {}, {})
    if need_grads or need_acts:
        grads, acts, inputs = _collect(model, graph, calib, loss_fn, need_grads, need_acts, per_batch)
    named = dict(model.named_modules())
    tensors = graph.rec.tensors
    param_ids = {id(p) for p in model.parameters()}

    def collect_inputs(mf):
        return inputs.get(mf, [])

    out = []
    if spec.fast is not None and not (need_grads or need_acts):
        for g in graph.groups:
            members = [m for m in g.members if id(tensors[m.fqn]) in param_ids] or g.members
            scored = []
            for m in members:
                chans, s = spec.fast(tensors[m.fqn], m.dim, m.channel, {"fqn": m.fqn, "seed": seed})
                scored.append((m, chans, np.asarray(s, dtype=np.float64)))
            out.append(reduce_scores(g.width, scored, reduce))
        return out
    hosted: dict = {}

    def host(fqn):  # data-driven criteria score on the CPU, next to the statistics
        if fqn not in hosted:
            hosted[fqn] = tensors[fqn].detach().cpu()
        return hosted[fqn]

    for g in graph.groups:
        members = [m for m in g.members if id(tensors[m.fqn]) in param_ids]
        consumers = []
        for m in members:
            if m.role == "consumer":
                _, rows = channel_rows(host(m.fqn), m.dim, m.channel)
                mf = _module_of(m.fqn)
                consumers.append(ConsumerView(m.fqn, mf, named.get(mf), m.dim, rows))
        scored = []
        for m in members or g.members:
            t = host(m.fqn)
            chans, rows = channel_rows(t, m.dim, m.channel)
            gr = grb = None
            if m.fqn in grads:
                _, gr = channel_rows(grads[m.fqn], m.dim, m.channel)
            if m.fqn + "#batches" in grads:
                grb = [channel_rows(b, m.dim, m.channel)[1] for b in grads[m.fqn + "#batches"]]
            mf = _module_of(m.fqn)
            act = None
            if m.role == "producer" and mf in acts:
                a = torch.cat([_channel_first(x, named.get(mf)) for x in acts[mf]], 1)
                if a.shape[0] == m.size:
                    _, act = channel_rows(a, 0, m.channel)
            view = ChannelView(m.fqn, m.dim, m.role, chans, rows, gr, act, named.get(mf), mf, g, consumers,
                               collect_inputs, seed, grb)
            scored.append((m, chans, score_member(spec, view)))
        out.append(reduce_scores(g.width, scored, reduce))
    return out
