"""Scores per channel of every coupled group: :func:`score_groups` runs the calibration batches through the
one collector (:func:`prunekit.criteria.collect.collect_for_scoring`), hands each group member to the
registered criterion and reduces the members' scores per channel."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..criteria.collect import channel_first, collect_for_scoring, default_loss as _default_loss  # noqa: F401
from ..criteria import ChannelView, ConsumerView, channel_rows, get_criterion, reduce_scores, score_member
from ..graph import Graph

__all__ = ["score_groups"]


def _module_of(fqn: str) -> str:
    return fqn.rpartition(".")[0]


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
        grads, acts, inputs = collect_for_scoring(model, graph, calib, loss_fn, need_grads, need_acts, per_batch)
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
                a = torch.cat([channel_first(x, named.get(mf)) for x in acts[mf]], 1)
                if a.shape[0] == m.size:
                    _, act = channel_rows(a, 0, m.channel)
            view = ChannelView(m.fqn, m.dim, m.role, chans, rows, gr, act, named.get(mf), mf, g, consumers,
                               collect_inputs, seed, grb)
            scored.append((m, chans, score_member(spec, view)))
        out.append(reduce_scores(g.width, scored, reduce))
    return out
