"""Slimmable execution: one traced model run at any per-group kept width, chosen per forward, without copying it.

The search and supernet methods (MetaPruning's PruningNet, DMCP's Markov channel process, TAS, DSA, ...) train
or evaluate *many* sub-networks of one network. :class:`Slimmable` traces the model once (the groups and
segments ``pk.plan`` allocates over, through :class:`prunekit.api.Subnets`) and orders every segment's channels
(``order="index"``: the first channels are kept, as slimmable and DMCP/MetaPruning networks crop; or
``order="criterion"``: the channels the criterion ranks highest). A forward at widths ``w`` keeps, in segment
``i``, its first ``w[i]`` channels in that order:

* every *reader* of a channel (the group's consumers: the next convolutions' input slices, the classifier's
  columns) has its weights multiplied by a per-channel keep value, through :func:`torch.func.functional_call`:
  the model's modules and parameters are never changed and gradients flow into the shared weights. With 0/1
  keep values this computes exactly what the physically pruned network computes when every reader of a channel
  is a weighted layer (convolutions, linear layers): :meth:`Slimmable.max_error` checks it against
  :meth:`Slimmable.pruned_copy`;
* soft keep values (a probability per channel) scale what every reader sees of that channel, the
  differentiable relaxation DMCP trains its architecture parameters with (:meth:`Slimmable.forward` ``keep=``);
* ``overrides`` replaces parameters for the forward (MetaPruning's generated weights).

:class:`WidthSampler` draws widths on a grid of width ratios (uniform per group, the largest, the smallest) and
the sandwich rule (largest, smallest and ``n`` random, Yu & Huang, "Universally Slimmable Networks", ICCV 2019).
:class:`SlimmableNet` is the ``nn.Module`` view a training loop calls (``widths`` set per forward) and
:class:`SandwichRule` the callback that trains it as a supernet inside :func:`prunekit.train.fit` (in-place
distillation from the largest width to the others).
"""
from __future__ import annotations

import copy
import logging
from typing import Literal, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..api import Subnets, prune_
from ..errors import ConfigError
from .callbacks import Callback
from .loop import output_logits

__all__ = ["Slimmable", "WidthSampler", "SlimmableNet", "SandwichRule", "ratio_grid"]

log = logging.getLogger(__name__)


def ratio_grid(lo: float, hi: float, step: float) -> tuple:
    """Width ratios ``lo, lo + step, ..., hi`` (MetaPruning's 31 ratios: ``ratio_grid(0.1, 1.0, 0.03)``).

    Example:
        >>> ratio_grid(0.25, 1.0, 0.25)
        (0.25, 0.5, 0.75, 1.0)
    """
    if not (0 < lo <= hi <= 1 and step > 0):
        raise ConfigError(f"ratio_grid(lo={lo}, hi={hi}, step={step}): need 0 < lo <= hi <= 1 and step > 0")
    n = int(round((hi - lo) / step))
    return tuple(round(lo + k * step, 6) for k in range(n + 1))


class Slimmable:
    """A traced model run at per-segment kept widths chosen per forward (see the module docstring).

    Args:
        model, example_inputs: the network (not copied; its parameters are shared by every width).
        order: ``"index"`` keeps each segment's first channels; ``"criterion"`` the best-scored by ``criterion``.
        ignore, min_channels, calib: as in :class:`prunekit.api.Subnets`.

    Example:
        >>> import torch, prunekit as pk
        >>> from prunekit.testing import models
        >>> m, x = models()["chain"]()
        >>> s = Slimmable(m, x)
        >>> w = s.space.uniform(0.5)
        >>> s.max_error(w) < 1e-4
        True
    """

    def __init__(self, model: nn.Module, example_inputs, *, order: Literal["index", "criterion"] = "index",
                 criterion: str = "l1", ignore=(), min_channels: int = 1, calib=None):
        if order not in ("index", "criterion"):
            raise ConfigError(f"order={order!r}; choose 'index' (keep the first channels) or 'criterion'")
        self.model, self.example_inputs, self.order = model, example_inputs, order
        self.subnets = Subnets(model, example_inputs, criterion="l1" if order == "index" else criterion,
                               calib=calib, ignore=ignore, min_channels=min_channels)
        sub = self.subnets
        if order == "index":  # channel c of a segment of width w scores w - c: the last channels go first
            sub.scores = [np.arange(len(c), 0, -1, dtype=float) for _, c, _ in sub.segments]
        self.space, self.graph = sub.space, sub.graph
        offsets, total = {}, 0
        for g in self.graph.groups:
            offsets[g.id], total = total, total + g.width
        self.n_channels = total
        self.offsets = [offsets[g.id] for g in self.graph.groups]  # first flat channel of each graph group
        # per flat channel: its segment and its rank inside the segment (0 = kept first); -1 outside segments
        seg_of, rank_of = np.full(total, -1), np.zeros(total, dtype=np.int64)
        self.segment_channels = []  # flat channel indices of each segment, in keep order
        for i, ((gid, chans, _), sc) in enumerate(zip(sub.segments, sub.scores)):
            keep_order = np.asarray(chans)[np.argsort(-np.asarray(sc), kind="stable")]
            flat = offsets[gid] + keep_order
            seg_of[flat], rank_of[flat] = i, np.arange(len(flat))
            self.segment_channels.append(torch.as_tensor(flat, dtype=torch.long))
        self._seg_of, self._rank_of = torch.as_tensor(seg_of), torch.as_tensor(rank_of)
        params = dict(model.named_parameters())
        maps: dict[tuple, np.ndarray] = {}
        for g in self.graph.groups:
            for m in g.members:
                if m.role != "consumer" or m.fqn not in params:
                    continue
                cur = maps.setdefault((m.fqn, m.dim), np.full(params[m.fqn].shape[m.dim], -1))
                hit = m.channel >= 0
                cur[hit] = offsets[g.id] + m.channel[hit]
        # the parameters that read channels: (fqn, dim, flat channel of each position, total as "always kept")
        self.readers = [(fqn, dim, torch.as_tensor(np.where(pos >= 0, pos, total), dtype=torch.long))
                        for (fqn, dim), pos in sorted(maps.items())]
        self.readers = [r for r in self.readers if bool((r[2] < total).any())]
        self._out_seg, self._in_seg = self._producer_maps(offsets, seg_of, params)

    def _producer_maps(self, offsets, seg_of, params):
        """``{param fqn: segment}`` of the channels each weight produces (dim 0) and reads (its consumer dim)."""
        out_seg, in_seg = {}, {}
        for g in self.graph.groups:
            for m in g.members:
                if m.fqn not in params:
                    continue
                hit = m.channel[m.channel >= 0]
                if not len(hit):
                    continue
                s = int(seg_of[offsets[g.id] + hit[0]])
                if s < 0:
                    continue
                if m.role == "producer" and m.fqn.endswith("weight"):
                    out_seg[m.fqn] = s
                elif m.role == "consumer" and m.fqn.endswith("weight"):
                    in_seg[m.fqn] = s
        return out_seg, in_seg

    # ------------------------------------------------------------------------------------------- widths
    @property
    def names(self) -> tuple:
        return self.space.names

    def segment_of(self, fqn: str) -> tuple[int | None, int | None]:
        """``(segment of the output channels, segment of the input channels)`` of parameter ``fqn``."""
        return self._out_seg.get(fqn), self._in_seg.get(fqn)

    def widths_of(self, per_module: Mapping[str, float]) -> tuple:
        """Widths from ``{module fqn: kept channels (int) or kept ratio (float)}`` (other segments full).

        Modules whose channels are coupled (one segment: a residual stream, a concat) must ask the same width;
        a request the coupled groups cannot realise is refused naming the modules that share the channels.
        """
        mods = {}
        for i, (_, _, ms) in enumerate(self.subnets.segments):
            for m in ms:
                mods.setdefault(m, i)
        asked: dict[int, list] = {}
        problems = []
        for name, v in per_module.items():
            if name not in mods:
                problems.append(f"module {name!r} has no prunable output channels here (prunable: "
                                f"{', '.join(sorted(mods)[:12])}{', ...' if len(mods) > 12 else ''})")
                continue
            i = mods[name]
            w = self.space.widths[i]
            k = int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else int(round(float(v) * w))
            if not self.space.min_kept[i] <= k <= w:
                problems.append(f"module {name!r}: {v!r} keeps {k} of {w} channels; allowed "
                                f"{self.space.min_kept[i]}..{w}")
                continue
            asked.setdefault(i, []).append((name, k))
        for i, req in asked.items():
            if len({k for _, k in req}) > 1:
                group = self.subnets.segments[i][2]
                problems.append(f"modules {', '.join(f'{n}={k}' for n, k in req)} share their output channels "
                                f"(coupled group {self.space.names[i]!r}: {', '.join(group)}); a slimmable width "
                                f"is one per coupled group, give them the same width")
        if problems:
            raise ConfigError("; ".join(problems))
        widths = list(self.space.full())
        for i, req in asked.items():
            widths[i] = req[0][1]
        return tuple(widths)

    def check(self, widths: Sequence[int]) -> tuple:
        """``widths`` as a tuple, refused (naming the group) when one is outside its group's range."""
        if len(widths) != len(self.space):
            raise ConfigError(f"widths has {len(widths)} entries; the model has {len(self.space)} prunable groups "
                              f"({', '.join(self.space.names[:8])}{', ...' if len(self.space) > 8 else ''})")
        bad = [f"{n}={w} (allowed {lo}..{hi})" for n, w, lo, hi in
               zip(self.space.names, widths, self.space.min_kept, self.space.max_kept) if not lo <= int(w) <= hi]
        if bad:
            raise ConfigError(f"widths outside their groups' ranges: {', '.join(bad)}")
        return tuple(int(w) for w in widths)

    def keep(self, widths: Sequence[int]) -> torch.Tensor:
        """The 0/1 keep value of every channel of the graph (flat, groups in order) at ``widths``."""
        w = torch.as_tensor(self.check(widths) + (self.n_channels + 1,), dtype=torch.long)  # -1 -> "always"
        return (self._rank_of < w[self._seg_of]).float()

    def soft_keep(self, per_segment: Sequence[torch.Tensor]) -> torch.Tensor:
        """Flat keep values from one tensor per segment (its channels in keep order), e.g. DMCP's marginals."""
        if len(per_segment) != len(self.space):
            raise ConfigError(f"per_segment has {len(per_segment)} entries; the model has {len(self.space)} groups")
        ref = per_segment[0]
        flat = torch.ones(self.n_channels, dtype=ref.dtype, device=ref.device)
        idx = torch.cat([c.to(ref.device) for c in self.segment_channels])
        return flat.index_put((idx,), torch.cat(list(per_segment)))

    def ratios(self, widths: Sequence[int]) -> tuple:
        return tuple(int(w) / W for w, W in zip(widths, self.space.widths))

    # ------------------------------------------------------------------------------------------- running
    def weights(self, keep: torch.Tensor, overrides: Mapping[str, torch.Tensor] | None = None) -> dict:
        """``{param fqn: tensor}`` of the readers with their channels scaled by ``keep`` (plus ``overrides``)."""
        params = dict(self.model.named_parameters())
        out = dict(overrides or {})
        ext = torch.cat([keep, keep.new_ones(1)])
        for fqn, dim, pos in self.readers:
            p = out.get(fqn, params[fqn])
            m = ext[pos.to(ext.device)].to(p.dtype)
            shape = [1] * p.dim()
            shape[dim] = -1
            out[fqn] = p * m.view(shape)
        return out

    def forward(self, *args, widths: Sequence[int] | None = None, keep: torch.Tensor | None = None,
                overrides: Mapping[str, torch.Tensor] | None = None, **kwargs):
        """The model's output at ``widths`` (or soft ``keep`` values; neither: every channel) with parameters
        ``overrides`` replaced; the model itself is not changed."""
        if widths is not None and keep is not None:
            raise ConfigError("pass widths= or keep=, not both")
        if keep is None and widths is not None:
            keep = self.keep(widths)
        if keep is None:
            if not overrides:
                return self.model(*args, **kwargs)
            return functional_call(self.model, dict(overrides), args, kwargs, strict=False)
        return functional_call(self.model, self.weights(keep, overrides), args, kwargs, strict=False)

    __call__ = forward

    def cost(self, widths: Sequence[int], kind: str = "macs") -> float:
        """Exact kept fraction of MACs/params at ``widths`` (the engine's cost model)."""
        return self.subnets.cost(self.check(widths), kind)

    def plan(self, widths: Sequence[int]):
        """The plan that removes every channel the widths drop (``pk.prune_(model, plan)``)."""
        return self.subnets.plan(self.check(widths))

    def cut_(self, widths: Sequence[int]):
        """Physically prune the model to ``widths`` (in place); returns the engine's report."""
        return prune_(self.model, self.plan(widths), example_inputs=self.example_inputs)

    def pruned_copy(self, widths: Sequence[int]) -> nn.Module:
        clone = copy.deepcopy(self.model)
        prune_(clone, self.plan(widths), example_inputs=self.example_inputs)
        return clone

    @torch.no_grad()
    def max_error(self, widths: Sequence[int], *inputs) -> float:
        """Largest absolute difference between the slimmable forward at ``widths`` and a physically pruned copy
        (both in eval mode) on ``inputs`` (default: the example inputs)."""
        inputs = inputs or (self.example_inputs if isinstance(self.example_inputs, tuple) else (self.example_inputs,))
        clone = self.pruned_copy(widths).eval()
        mode = self.model.training
        self.model.eval()
        try:
            a = output_logits(self.forward(*inputs, widths=widths))
        finally:
            self.model.train(mode)
        b = output_logits(clone(*inputs))
        return float((a - b).abs().max())


class WidthSampler:
    """Widths on a grid of kept ratios, per group (``grid=None``: every width the space allows).

    Example:
        >>> from prunekit.allocate.search import SearchSpace
        >>> s = WidthSampler(SearchSpace.of(["a", "b"], [8, 4]), grid=(0.25, 0.5, 1.0))
        >>> s.choices, s.largest(), s.smallest()
        (((2, 4, 8), (1, 2, 4)), (8, 4), (2, 1))
    """

    def __init__(self, space, grid: Sequence[float] | None = None):
        self.space = space
        if grid is None:
            self.choices = tuple(tuple(range(space.min_kept[i], space.max_kept[i] + 1)) for i in range(len(space)))
        else:
            if not grid or any(not 0 < float(r) <= 1 for r in grid):
                raise ConfigError(f"grid={tuple(grid)!r}: width ratios must be in (0, 1]")
            self.choices = tuple(tuple(sorted({space.snap(i, float(r) * w) for r in grid}))
                                 for i, w in enumerate(space.widths))
        self.grid = None if grid is None else tuple(float(r) for r in grid)

    def largest(self) -> tuple:
        return tuple(c[-1] for c in self.choices)

    def smallest(self) -> tuple:
        return tuple(c[0] for c in self.choices)

    def uniform(self, rng: np.random.Generator) -> tuple:
        """One width per group, each uniform over the group's choices (independent across groups)."""
        return tuple(int(c[rng.integers(len(c))]) for c in self.choices)

    def sandwich(self, rng: np.random.Generator, n: int = 2) -> list:
        """The sandwich rule: ``[largest, smallest, n uniform]``."""
        return [self.largest(), self.smallest()] + [self.uniform(rng) for _ in range(n)]

    def snap(self, widths: Sequence[float]) -> tuple:
        """Each width moved to the nearest choice of its group."""
        return tuple(int(min(c, key=lambda k: (abs(k - w), k))) for c, w in zip(self.choices, widths))

    def index(self, widths: Sequence[int]) -> tuple:
        """Each width's position in its group's choices (the encoding a search mutates)."""
        return tuple(c.index(int(w)) for c, w in zip(self.choices, widths))


class SlimmableNet(nn.Module):
    """An ``nn.Module`` running ``slim`` at ``self.widths`` (None: the full model), for training loops.

    The wrapped model is a submodule (its parameters are trained, never copied)."""

    def __init__(self, slim: Slimmable):
        super().__init__()
        self.model = slim.model
        self.slim = slim
        self.widths: tuple | None = None
        self.keep: torch.Tensor | None = None

    def forward(self, *args, **kwargs):
        return self.slim.forward(*args, widths=self.widths, keep=self.keep, **kwargs)


def inplace_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) on softmaxed logits, the teacher detached (in-place distillation)."""
    t = F.softmax(teacher.detach().float(), -1)
    return F.kl_div(F.log_softmax(student.float(), -1), t, reduction="batchmean")


class SandwichRule(Callback):
    """Trains a :class:`SlimmableNet` as a supernet inside ``fit``: each step, the loop's forward runs the largest
    width (its loss is the loop's), then the smallest and ``n`` uniform widths add their losses before the one
    backward (their gradients accumulate into the shared weights, as the sandwich rule sums them); with
    ``distill`` those widths learn the largest width's soft predictions (in-place distillation).

    ``widths_seen`` counts every width trained; ``steps`` the steps taken."""

    def __init__(self, net: SlimmableNet, sampler: WidthSampler, *, n: int = 2, distill: bool = True, seed: int = 0):
        if n < 0:
            raise ConfigError(f"n={n!r} must be >= 0 (random widths per step besides the largest and smallest)")
        self.net, self.sampler, self.n, self.distill, self.seed = net, sampler, n, distill, seed
        self.steps, self.widths_seen = 0, set()

    def on_batch_start(self, state) -> None:
        self.net.widths, self.net.keep = self.sampler.largest(), None

    def on_before_backward(self, state) -> None:
        rng = np.random.default_rng([self.seed, state.step])
        others = self.sampler.sandwich(rng, self.n)[1:]
        self.widths_seen.add(self.sampler.largest())
        for w in others:
            out = output_logits(self.net.slim.forward(state.inputs, widths=w))
            if self.distill:
                extra = inplace_distillation(out, state.outputs)
            else:
                extra = F.cross_entropy(out.float(), state.targets)
            state.loss = state.loss + extra
            self.widths_seen.add(tuple(w))

    def on_after_step(self, state) -> None:
        self.steps += 1
