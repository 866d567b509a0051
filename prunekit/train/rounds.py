"""Structured pruning in rounds: score, cut the globally lowest channels, train a few steps, repeat.

The schedule of the iterative Taylor papers (Molchanov et al. 2017: one feature map per round, then a few
minibatches of fine-tuning; 2019: 100 units every 30 minibatches, up to 32 rounds) and of any method that
interleaves structured cuts with short training. :func:`prune_in_rounds` takes the scoring function as an
argument, ranks the raw scores across the whole network (no per-layer normalisation is added here: a score
that wants one, such as Taylor-FM's l2 scaling, does it itself), cuts through the engine
(:func:`prunekit.api.plan_channels` + :func:`prunekit.api.prune_`) and trains between rounds only through
:func:`prunekit.train.fit`. The last round lands on the MAC/parameter target: it removes the shortest
prefix of the ranking whose cost meets the budget.

Example:
    >>> import torch, numpy as np
    >>> from prunekit.testing import models
    >>> model, x = models()["chain"]()
    >>> score = lambda m, graph: [np.arange(g.width, dtype=float) for g in graph.groups]
    >>> r = prune_in_rounds(model, x, target="params=0.7", score=score, per_round=2, max_rounds=4)
    >>> r.cost_after <= 0.7 * r.cost_before and r.rounds >= 2
    True
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import re
from typing import Callable, Iterable

import numpy as np
from torch import nn

from ..allocate import parse_target
from ..api import plan, plan_channels, prune_, score_groups
from ..errors import ConfigError
from ..graph import Graph, build_graph
from .config import TrainConfig
from .loop import fit

log = logging.getLogger(__name__)

__all__ = ["prune_in_rounds", "RoundsResult", "Scorer", "registered_scorer", "between_rounds_config"]

Scorer = Callable[[nn.Module, Graph], list]  # (model, graph) -> one float array [width] per graph group


@dataclasses.dataclass
class RoundsResult:
    rounds: int  # cuts made
    per_round: int  # channels removed per round before the last (per_round, or more when max_rounds binds)
    removed: list  # channels removed in each round
    steps_between: int  # training steps asked for after each cut but the last
    train_steps: int  # training steps actually taken between rounds, in total
    kind: str  # "macs" | "params"
    cost_before: int
    cost_after: int
    kept_history: list  # cost after each round / cost_before

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _ignore_ids(model: nn.Module, ignore) -> dict:
    named = dict(model.named_modules())
    by_id = {id(m): n for n, m in named.items()}
    out = {}
    for it in ignore or ():
        if isinstance(it, nn.Module):
            out[id(it)] = by_id[id(it)]
        elif isinstance(it, str) and it.startswith("re:"):
            out.update({id(m): n for n, m in named.items() if n and re.fullmatch(it[3:], n)})
        elif it in named:
            out[id(named[it])] = it
    return out


def _key_member(group, params: dict):
    """The member through which ``plan_channels`` is told the group's channels: a parameter along its output
    dim, covering as many of the group's channels as possible."""
    best = None
    for m in group.members:
        if m.fqn in params and m.dim == 0 and m.fqn.endswith("weight"):
            cover = len(np.unique(m.channel[m.channel >= 0]))
            if best is None or cover > best[0]:
                best = (cover, m)
    return None if best is None else best[1]


def _batches(train_data) -> Iterable:
    while True:
        n = 0
        for b in train_data:
            n += 1
            yield b
        if n == 0:
            raise ConfigError("train_data yielded no batches; pass a non-empty loader or list of (inputs, targets)")


def prune_in_rounds(model: nn.Module, example_inputs, *, target: str, score: Scorer, per_round: int,
                    max_rounds: int, train_data=None, steps_between: int = 0, train_config: TrainConfig | None = None,
                    ignore=(), min_channels: int = 1) -> RoundsResult:
    """Cut ``model`` to ``target`` in rounds of the ``per_round`` globally lowest-scoring channels, training
    ``steps_between`` minibatches of ``train_data`` after every cut but the last (one call of
    :func:`~prunekit.train.fit` per gap, with ``train_config``; the batches cycle over ``train_data``).

    ``per_round`` grows to ``ceil(n / max_rounds)`` when ``max_rounds`` rounds of it would not remove the
    ``n`` channels a data-free plan needs for the target; the last round removes what is still needed.
    Every group keeps at least ``min_channels`` channels. An unreachable target raises ``ConfigError`` before
    the model is changed.
    """
    kind, frac = parse_target(target)
    if steps_between > 0 and train_data is None:
        raise ConfigError(f"steps_between={steps_between} trains between rounds but train_data=None; pass "
                          f"training batches or set steps_between=0")
    ignore_ids = _ignore_ids(model, ignore)
    p = plan(model, example_inputs, target=target, criterion="l1", ignore=list(ignore), allocation="global")  # raises
    n_total = sum(g.removed for g in p.groups)
    per = max(int(per_round), math.ceil(n_total / max(int(max_rounds), 1)))
    cfg = train_config or TrainConfig(progress=False)
    cfg = cfg.replace(epochs=1, checkpoint_dir=None, resume=False, progress=False)
    stream = _batches(train_data) if steps_between > 0 else None
    dense = budget = after = None
    removed, history, trained = [], [], 0
    for k in range(int(max_rounds)):
        if k and stream is not None:  # the gap after the previous cut
            was = model.training
            fit(model, list(itertools.islice(stream, steps_between)), cfg.replace(seed=cfg.seed + k))
            model.train(was)
            trained += steps_between
        graph = build_graph(model, example_inputs, ignore_modules=ignore_ids)
        cost = graph.macs if kind == "macs" else graph.params
        if dense is None:
            dense = cost()
            budget = int(math.floor(dense * frac))
            if dense <= budget:
                break
        chosen = _choose(model, graph, score(model, graph), cost, budget,
                         per if k < max_rounds - 1 else None, min_channels)
        if not chosen:
            raise ConfigError(f"target={target!r} cannot be reached by removing channels one round at a time "
                              f"(each group keeps min_channels={min_channels}); ask for a larger fraction kept")
        after = cost(graph.removed_flat({g: np.asarray(c) for g, c in chosen.items()}))
        params = dict(model.named_parameters())
        channels = {}
        for gid, chans in chosen.items():
            m = _key_member(graph.groups[gid], params)
            channels[m.fqn] = m.positions(np.asarray(chans)).tolist()
        prune_(model, plan_channels(model, example_inputs, channels, ignore=list(ignore)))
        removed.append(sum(len(c) for c in chosen.values()))
        history.append(after / dense)
        log.info("round %d: removed %d channels, %s at %.4f of dense", k, removed[-1], kind, history[-1])
        if after <= budget:
            break
    return RoundsResult(rounds=len(removed), per_round=per, removed=removed, steps_between=int(steps_between),
                        train_steps=trained, kind=kind, cost_before=int(dense),
                        cost_after=int(dense if after is None else after),
                        kept_history=history)


def _choose(model, graph: Graph, scores: list, cost, budget: int, n: int | None, min_channels: int) -> dict:
    """``{group id: channels}``: the ``n`` lowest raw scores over all groups (None: as many as needed), or
    the shortest prefix of that ranking whose cost meets ``budget``."""
    params = dict(model.named_parameters())
    cand_g, cand_c, cand_s = [], [], []
    for gid, (g, s) in enumerate(zip(graph.groups, scores)):
        m = _key_member(g, params)
        if m is None:
            continue
        chans = np.unique(m.channel[m.channel >= 0])
        s = np.asarray(s, dtype=np.float64)[chans]
        keep = max(int(min_channels), 1)
        if len(chans) <= keep:
            continue
        order = np.argsort(s, kind="stable")[: len(chans) - keep]  # the best `keep` are never candidates
        cand_g.append(np.full(len(order), gid))
        cand_c.append(chans[order])
        cand_s.append(s[order])
    if not cand_g:
        return {}
    gids, chans, vals = np.concatenate(cand_g), np.concatenate(cand_c), np.concatenate(cand_s)
    order = np.lexsort((chans, gids, vals))  # lowest score first; ties by group, then channel
    gids, chans = gids[order], chans[order]

    def removal(k):
        out: dict = {}
        for g, c in zip(gids[:k], chans[:k]):
            out.setdefault(int(g), []).append(int(c))
        return out

    def cost_at(k):
        return cost(graph.removed_flat({g: np.asarray(c) for g, c in removal(k).items()}))

    hi = len(gids) if n is None else min(n, len(gids))
    if cost_at(hi) > budget:
        return removal(hi) if n is not None else {}
    lo = 0  # cost_at(lo) > budget (the round runs only then), cost_at(hi) <= budget
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if cost_at(mid) <= budget:
            hi = mid
        else:
            lo = mid
    return removal(hi)


def registered_scorer(criterion: str, calib, *, reduce: str = "producer", seed: int = 0) -> Scorer:
    """A :data:`Scorer` from a registered engine criterion (``l1``, ``l2``, ``random``, ...): the engine's
    per-group scores (members mean-normalised, so different layers compare), for same-schedule baselines."""
    return lambda model, graph: score_groups(model, graph, criterion, calib=calib, reduce=reduce, seed=seed)


def between_rounds_config(base: TrainConfig | None, *, lr: float, device, seed: int) -> TrainConfig:
    """The training between rounds of the Taylor papers: plain SGD with momentum 0.9 at a constant ``lr``,
    no weight decay (Molchanov et al. 2019's released command); other fields (amp, ...) from ``base``."""
    base = base or TrainConfig(progress=False)
    return base.replace(optimizer="sgd", lr=lr, momentum=0.9, nesterov=False, weight_decay=0.0,
                        scheduler="constant", warmup_steps=0, min_lr=0.0, kd_alpha=0.0, label_smoothing=0.0,
                        device=str(device or "cpu"), seed=seed)


def prune_in_rounds_with(ctx, cfg, paper_score: Callable, paper_criterion: str) -> tuple[dict, dict]:
    """The body every round-based method shares: ``(info, telemetry)`` of :func:`prune_in_rounds` run on
    ``ctx`` (model, example inputs, target, calib, train data, ignore, device, seed) with ``cfg``'s
    ``per_round``, ``max_rounds``, ``steps_between``, ``lr`` and ``criterion``; ``cfg.criterion ==
    paper_criterion`` ranks with ``paper_score(model, graph, calib)``, anything else with that registered
    criterion (the same-schedule baselines)."""
    if cfg.criterion == paper_criterion:
        def score(model, graph):
            return paper_score(model, graph, ctx.calib)
    else:
        score = registered_scorer(cfg.criterion, ctx.calib, seed=ctx.seed)
    res = prune_in_rounds(ctx.model, ctx.example_inputs, target=ctx.target, score=score, per_round=cfg.per_round,
                          max_rounds=cfg.max_rounds, train_data=ctx.train_data, steps_between=cfg.steps_between,
                          train_config=between_rounds_config(ctx.train_config, lr=cfg.lr, device=ctx.device,
                                                             seed=ctx.seed), ignore=ctx.ignore)
    telemetry = {"rounds": res.rounds, "steps_between": res.steps_between, "train_steps": res.train_steps}
    return {"criterion": cfg.criterion, **res.to_dict()}, telemetry
