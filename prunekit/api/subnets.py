"""Sub-networks of one model, for the search methods: kept widths -> exact cost, a masked view, a plan.

:class:`Subnets` traces the model once, scores every channel once with a criterion (EagleEye, LeGR, ABC and
AMC all rank filters inside a layer by a fixed criterion and search only the widths), and then answers for any
candidate (one kept width per prunable segment, the same segments ``pk.plan`` allocates over):

- :meth:`Subnets.cost`: the exact kept fraction of MACs or parameters, from the graph's cost model;
- :meth:`Subnets.masked`: the model *as if* pruned to the candidate, without copying it: every layer that
  reads a removed channel (the group's consumers) has that input weight zeroed, which computes exactly what
  the pruned network computes when every reader of a channel is a weighted layer (convolutions, linear layers:
  the channel's producers and BatchNorm only feed those readers). The weights and BatchNorm buffers are
  restored on exit, whatever happened inside. The first masked view is checked once against a physically
  pruned copy on the example input; where they differ (a normalisation over channels, such as LayerNorm, reads
  every channel) every later view is a pruned copy instead (``exact`` tells which);
- :meth:`Subnets.plan`: the :class:`~prunekit.api.Plan` that removes the candidate's channels, for ``prune_``.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math

import numpy as np
import torch
from torch import nn

from ..allocate import allocate_to_target, kept_at, parse_target
from ..allocate.search import SearchSpace
from ..errors import ConfigError
from .applying import prune_
from .options import _check_device, _module_fqns, _resolve_allocation_reduce
from .planning import _make_plan, _plan_graph, _removal, _segments, _whole_network_scorer
from .plans import Plan
from .scoring import score_groups

__all__ = ["Subnets"]

log = logging.getLogger(__name__)


class Subnets:
    """The candidates of a width search over ``model`` (see the module docstring).

    ``criterion``/``reduce``/``calib``/``seed``: how channels are ranked inside a segment (as in
    ``pk.plan``); ``ignore``: modules whose channels stay; ``round_to``/``min_channels``: the space's units
    and floor; ``max_ratio``: a segment loses at most this fraction of its channels (None: up to
    ``min_channels``).

    Example:
        >>> import prunekit as pk
        >>> from prunekit.testing import models
        >>> m, x = models()["residual"]()
        >>> s = pk.api.Subnets(m, x)
        >>> half = s.space.uniform(0.5)
        >>> s.cost(half) < 1.0, s.cost(s.space.full())
        (True, 1.0)
    """

    def __init__(self, model: nn.Module, example_inputs, *, criterion: str = "l1", reduce: str | None = None,
                 calib=None, ignore=(), round_to: int = 1, min_channels: int = 1, max_ratio: float | None = None,
                 seed: int = 0, loss_fn=None):
        if max_ratio is not None and not 0.0 <= max_ratio < 1.0:
            raise ConfigError(f"max_ratio={max_ratio!r} must be in [0, 1): the largest fraction of a layer's "
                              f"channels a candidate may remove")
        _check_device(model, example_inputs)
        _, reduce = _resolve_allocation_reduce("uniform", None, reduce, criterion)
        ignore_modules = _module_fqns(model, ignore, "ignore") if ignore else {}
        self.model, self.example_inputs, self.ignore = model, example_inputs, tuple(ignore)
        self.graph = _plan_graph(model, example_inputs, ignore_modules, fast=calib is None, confirmed_at_once=False)
        scorer = _whole_network_scorer(criterion, model, example_inputs, calib, ignore)
        scores = score_groups(model, self.graph, criterion, calib=calib, loss_fn=loss_fn, reduce=reduce, seed=seed,
                              scorer=scorer)
        self.segments = [s for s in _segments(self.graph) if len(s[1]) > 0]
        self.scores = [np.asarray(scores[gid][chans], float) for gid, chans, _ in self.segments]
        widths = [len(c) for _, c, _ in self.segments]
        names = []
        for gid, _, mods in self.segments:
            name = mods[0] if mods else self.graph.groups[gid].name
            names.append(name if name not in names else f"{name}#{gid}")
        hi = list(widths)
        lo = [min(w, max(min_channels, 1)) for w in widths]
        if max_ratio is not None:
            lo = [max(a, w - math.floor(w * max_ratio + 1e-9)) for a, w in zip(lo, widths)]
        self.space = SearchSpace.of(names, widths, min_kept=lo, max_kept=hi, round_to=round_to)
        self.settings = {"criterion": criterion, "reduce": reduce, "allocation": "search", "round_to": round_to,
                         "min_channels": min_channels, "ignore": sorted(ignore_modules.values()), "seed": seed}
        self.exact: bool | None = None  # decided by the first masked view
        self._dense = {"macs": self.graph.macs(), "params": self.graph.params()}

    # ------------------------------------------------------------------------------------------------ costs
    def removal(self, widths) -> dict:
        """``{group id: channels removed}`` for a candidate."""
        return _removal(self.segments, self.scores, list(self.space.clip(widths)))

    def cost(self, widths, kind: str = "macs") -> float:
        """Kept fraction of ``kind`` (``"macs"`` or ``"params"``) for a candidate, exact."""
        if kind not in self._dense:
            raise ConfigError(f"kind={kind!r} is not a cost; choose 'macs' or 'params'")
        f = self.graph.macs if kind == "macs" else self.graph.params
        return f(self.graph.removed_flat(self.removal(widths))) / max(self._dense[kind], 1)

    def target(self, target: str) -> tuple[str, float]:
        """``(kind, kept fraction)`` of a ``macs=``/``params=``/``sparsity=`` target."""
        return parse_target(target)

    def uniform_at(self, target: str, *, allocation: str = "uniform") -> tuple:
        """The widths ``pk.plan`` would give at ``target`` (uniform or global allocation of the same
        criterion): the baseline a search is compared with."""
        kind, frac = parse_target(target)
        cost = self.graph.macs if kind == "macs" else self.graph.params
        budget = int(math.floor(self._dense[kind] * frac))
        kept, _ = allocate_to_target(
            list(self.space.widths), self.scores,
            lambda k: cost(self.graph.removed_flat(_removal(self.segments, self.scores, k))), budget,
            allocation=allocation, round_to=self.space.round_to, min_channels=min(self.space.min_kept))
        return tuple(kept)

    def kept_at(self, sparsity: float) -> tuple:
        return tuple(kept_at(list(self.space.widths), self.scores, sparsity, round_to=self.space.round_to,
                             min_channels=min(self.space.min_kept)))

    # ----------------------------------------------------------------------------------------------- views
    def _consumers(self, removal: dict) -> list:
        tensors = dict(self.model.named_parameters())
        out = []
        for gid, chans in removal.items():
            for m in self.graph.groups[gid].members:
                if m.role != "consumer" or m.fqn not in tensors:
                    continue
                pos = m.positions(chans)
                if len(pos):
                    out.append((tensors[m.fqn], m.dim, torch.as_tensor(pos, dtype=torch.long)))
        return out

    @contextlib.contextmanager
    def _zeroed(self, widths):
        """The model with every reader of a removed channel zeroed (restored on exit)."""
        saved = []
        bns = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        buffers = [(b, b.clone()) for m in bns for b in (m.running_mean, m.running_var, m.num_batches_tracked)
                   if b is not None]
        mode = self.model.training
        try:
            with torch.no_grad():
                for p, dim, idx in self._consumers(self.removal(widths)):
                    idx = idx.to(p.device)
                    saved.append((p, dim, idx, p.index_select(dim, idx).clone()))
                    p.index_fill_(dim, idx, 0.0)
            yield self.model
        finally:
            with torch.no_grad():
                for p, dim, idx, old in reversed(saved):
                    p.index_copy_(dim, idx, old)
                for b, old in buffers:
                    b.copy_(old)
            self.model.train(mode)

    def pruned_copy(self, widths) -> nn.Module:
        """A physically pruned deep copy of the model at ``widths`` (the model is not changed)."""
        clone = copy.deepcopy(self.model)
        prune_(clone, self.plan(widths), example_inputs=self.example_inputs)
        return clone

    @contextlib.contextmanager
    def masked(self, widths):
        """The model as if pruned to ``widths``; yields a module to evaluate (BatchNorm may be recalibrated
        inside: its buffers are restored on exit). Falls back to a pruned copy where masking is not exact."""
        if self.exact is None:
            self.exact = self._check_exact(widths)
        if self.exact:
            with self._zeroed(widths) as m:
                yield m
        else:
            yield self.pruned_copy(widths)

    @torch.no_grad()
    def _check_exact(self, widths) -> bool:
        clone = self.pruned_copy(widths)
        clone.eval()
        with self._zeroed(widths) as m:
            m.eval()
            a = _first_tensor(m(*_as_args(self.example_inputs)))
        b = _first_tensor(clone(*_as_args(self.example_inputs)))
        ok = a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5 * (1 + float(b.abs().max())))
        if not ok:
            log.info("masked sub-net views differ from the pruned model here; every view is a pruned copy")
        return bool(ok)

    def plan(self, widths) -> Plan:
        """The plan that removes the candidate's channels (apply with ``pk.prune_(model, plan)``)."""
        removal = self.removal(widths)
        settings = dict(self.settings, sparsity=None, target=None, per_layer={},
                        widths=dict(zip(self.space.names, map(int, self.space.clip(widths)))))
        return _make_plan(self.model, self.graph, removal, settings, self.example_inputs)


def _as_args(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _first_tensor(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if hasattr(out, "logits"):
        return out.logits
    for o in out:
        t = _first_tensor(o)
        if t is not None:
            return t
    raise ConfigError("the model's output holds no tensor to compare")
