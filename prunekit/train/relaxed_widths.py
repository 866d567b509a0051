"""Relaxed width distributions: a learnable categorical over candidate widths per channel group, sampled with
Gumbel-softmax, priced by a differentiable expected cost (MACs, parameters or table latency).

Differentiable width searches (TAS, and any method that learns "how many channels per layer" by gradient)
share the same pieces, written once here:

* :class:`WidthDistribution`: one channel group of ``width`` channels, candidate kept widths (TAS: 0.3, 0.4,
  ..., 1.0 of the width), learnable logits. :meth:`~WidthDistribution.probs`, :meth:`~WidthDistribution.entropy`,
  :meth:`~WidthDistribution.argmax_width`, a Gumbel-softmax sample over the candidates (soft, or
  straight-through hard: one-hot forward, the soft sample's gradient), TAS's two-candidate sample, and the
  channel-mask view: a width ``c`` keeps the *prefix* of the first ``c`` channels, so a sample's weights mix
  prefix masks into one per-channel mask, and the probability that channel ``i`` is kept is the mass of the
  candidates wider than ``i``.
* :func:`channel_wise_interpolation`: TAS's CWI, adaptive average pooling along the channel axis, which aligns a
  narrower output to a wider one so different widths can be summed.
* :class:`RelaxedWidths`: the distributions of several engine groups, their mean entropy and argmax widths, and
  the expected cost: :meth:`~RelaxedWidths.expected_cost` prices the per-channel keep probabilities with the
  engine's own cost model (:func:`prunekit.graph.expected_cost.expected_cost`: each layer's cost is a product of
  expected kept counts, so it is the expectation when the groups are independent), exact at a one-hot
  distribution; :meth:`~RelaxedWidths.expected_latency` is the exact expectation of a per-layer latency table
  (:class:`prunekit.measure.latency_table.LatencyTable`) over the independent input and output width
  distributions of every timed layer, plus the table's constant residual. Both are torch scalars: add them to a
  loss.
"""
from __future__ import annotations

import collections
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..graph.expected_cost import expected_cost

__all__ = ["TAS_RATIOS", "WidthDistribution", "RelaxedWidths", "gumbel_softmax", "channel_wise_interpolation",
           "candidate_widths", "tau_schedule", "DataHalves"]

TAS_RATIOS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # TAS's width choices (Dong & Yang 2019, sec. 4.1)


def candidate_widths(width: int, ratios: Sequence[float] = TAS_RATIOS) -> list[int]:
    """The distinct kept widths ``int(ratio * width)`` (at least 1), ascending.

    Example:
        >>> candidate_widths(16)
        [4, 6, 8, 9, 11, 12, 14, 16]
    """
    bad = [r for r in ratios if not 0.0 < r <= 1.0]
    if bad or not ratios:
        raise ConfigError(f"ratios={list(ratios)!r}: width ratios must be in (0, 1]; e.g. {list(TAS_RATIOS)}")
    return sorted({max(1, min(width, int(r * width + 1e-9))) for r in ratios})


def gumbel_softmax(logits: torch.Tensor, tau: float, *, hard: bool = False,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """``softmax((log_softmax(logits) + g) / tau)`` with Gumbel noise ``g``; ``hard``: the one-hot of its argmax
    in the forward pass and the soft sample's gradient in the backward pass (straight-through)."""
    u = torch.rand(logits.shape, generator=generator).clamp(1e-10, 1 - 1e-10).to(logits.device)
    y = F.softmax((F.log_softmax(logits, -1) - torch.log(-torch.log(u))) / tau, -1)
    if not hard:
        return y
    one = F.one_hot(y.argmax(-1), y.shape[-1]).to(y)
    return one - y.detach() + y


def channel_wise_interpolation(x: torch.Tensor, channels: int) -> torch.Tensor:
    """TAS's channel-wise interpolation: ``x`` (N, C, ...) resized along dim 1 to ``channels`` by adaptive average
    pooling (output channel ``o`` is the mean of input channels ``floor(o C / c) .. ceil((o + 1) C / c) - 1``);
    ``x`` itself when the sizes match. Widening by a whole factor repeats channels, keeping the channel mean.

    Example:
        >>> channel_wise_interpolation(torch.tensor([[1.0, 3.0]]), 4).tolist()
        [[1.0, 1.0, 3.0, 3.0]]
    """
    c = x.shape[1]
    if c == channels:
        return x
    flat = x.reshape(x.shape[0], c, -1).transpose(1, 2)  # (N, positions, C): pool over the last dim
    out = F.adaptive_avg_pool1d(flat.reshape(-1, 1, c), channels).reshape(flat.shape[0], flat.shape[1], channels)
    return out.transpose(1, 2).reshape(x.shape[0], channels, *x.shape[2:])


class WidthDistribution:
    """A categorical distribution over the kept widths of one group of ``width`` channels (module docstring).

    Example:
        >>> d = WidthDistribution(4, ratios=(0.5, 1.0))
        >>> d.candidates.tolist(), [round(p, 2) for p in d.keep_probability().tolist()]
        ([2, 4], [1.0, 1.0, 0.5, 0.5])
    """

    def __init__(self, width: int, ratios: Sequence[float] = TAS_RATIOS, *, logits: torch.Tensor | None = None,
                 device=None):
        self.width = int(width)
        self.candidates = torch.tensor(candidate_widths(self.width, ratios), dtype=torch.long)
        n = len(self.candidates)
        init = torch.zeros(n) if logits is None else torch.as_tensor(logits, dtype=torch.float32)
        if init.shape != (n,):
            raise ConfigError(f"logits of shape {tuple(init.shape)} for {n} candidate widths "
                              f"{self.candidates.tolist()}")
        self.logits = init.detach().clone().to(device).requires_grad_(True)
        # prefix[k, i] = 1 when candidate k keeps channel i (the first candidates[k] channels)
        self._prefix = (torch.arange(self.width)[None, :] < self.candidates[:, None]).float().to(device)

    def probs(self) -> torch.Tensor:
        return F.softmax(self.logits, -1)

    def entropy(self) -> torch.Tensor:
        return -(self.probs() * F.log_softmax(self.logits, -1)).sum()

    def argmax_width(self) -> int:
        return int(self.candidates[int(self.logits.detach().argmax())])

    def expected_width(self) -> torch.Tensor:
        return (self.probs() * self.candidates.to(self.logits)).sum()

    def sample(self, tau: float, *, hard: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Gumbel-softmax weights over the candidates (see :func:`gumbel_softmax`)."""
        return gumbel_softmax(self.logits, tau, hard=hard, generator=generator)

    def sample_two(self, tau: float, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """TAS's sample: Gumbel-perturbed probabilities ``softmax((log p + g) / tau)``, two candidates drawn from
        them without replacement, and their perturbed logits renormalised by a softmax over the two. Returns
        ``(indices, weights)`` (weights differentiable in the logits). One candidate: that one, weight 1."""
        if len(self.candidates) == 1:
            return torch.zeros(1, dtype=torch.long), torch.ones(1, device=self.logits.device) + 0 * self.logits.sum()
        u = torch.rand(self.logits.shape, generator=generator).clamp(1e-10, 1 - 1e-10).to(self.logits.device)
        z = (F.log_softmax(self.logits, -1) - torch.log(-torch.log(u))) / tau
        idx = torch.multinomial(F.softmax(z.detach(), -1).cpu() + 1e-7, 2, replacement=False, generator=generator)
        return idx, F.softmax(z[idx.to(z.device)], -1)

    def prefix_mask(self, weights: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        """The per-channel mask ``sum_k weights[k] * prefix(candidate k)`` (over ``indices`` when given)."""
        rows = self._prefix if indices is None else self._prefix[indices.to(self._prefix.device)]
        return weights @ rows.to(weights)

    def keep_probability(self, probs: torch.Tensor | None = None) -> torch.Tensor:
        """``P(channel i kept)`` = mass of the candidates wider than ``i`` (prefix masks), per channel."""
        p = self.probs() if probs is None else probs
        return p @ self._prefix.to(p)


class RelaxedWidths:
    """Width distributions of the channel groups of one traced :class:`~prunekit.graph.Graph`, by group id.

    Example:
        >>> from torch import nn
        >>> from prunekit.graph import build_graph
        >>> m = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False))
        >>> g = build_graph(m, torch.randn(1, 3))
        >>> rw = RelaxedWidths(g, {g.groups[0].id: 4}, ratios=(0.5, 1.0))
        >>> rw.expected_cost().item(), rw.exact_cost(rw.argmax_widths())  # E[width] = 3 -> 3*3 + 3*2
        (15.0, 10)
    """

    def __init__(self, graph, widths: Mapping[int, int], ratios: Sequence[float] = TAS_RATIOS, *, device=None):
        self.graph = graph
        by_id = {g.id: g for g in graph.groups}
        bad = [gid for gid, w in widths.items() if gid not in by_id or by_id[gid].width != w]
        if bad:
            raise ConfigError(f"widths for groups {bad}: not groups of this graph or of another width; groups: "
                              f"{[(g.id, g.name, g.width) for g in graph.groups][:10]}")
        self.dists = {gid: WidthDistribution(w, ratios, device=device) for gid, w in widths.items()}

    def parameters(self) -> list[torch.Tensor]:
        return [d.logits for d in self.dists.values()]

    def entropy(self) -> torch.Tensor:
        """Mean entropy of the groups' distributions (``log(#candidates)`` when uniform)."""
        return torch.stack([d.entropy() for d in self.dists.values()]).mean()

    def argmax_widths(self) -> dict[int, int]:
        return {gid: d.argmax_width() for gid, d in self.dists.items()}

    def keep(self, probs: Mapping[int, torch.Tensor] | None = None) -> dict[int, torch.Tensor]:
        """Per-channel keep probabilities of every group (from ``probs[gid]`` over candidates where given)."""
        probs = probs or {}
        return {gid: d.keep_probability(probs.get(gid)) for gid, d in self.dists.items()}

    def expected_cost(self, kind: str = "macs", probs: Mapping[int, torch.Tensor] | None = None) -> torch.Tensor:
        """Expected MACs or parameters (torch scalar, float64) under the distributions (or ``probs``)."""
        return expected_cost(self.graph, self.keep(probs), kind)

    def exact_cost(self, widths: Mapping[int, int], kind: str = "macs") -> int:
        """The engine's exact cost when group ``gid`` keeps its first ``widths[gid]`` channels."""
        removal = {gid: np.arange(int(w), self.dists[gid].width) for gid, w in widths.items()
                   if int(w) < self.dists[gid].width}
        flat = self.graph.removed_flat(removal)
        return int(self.graph.macs(flat) if kind == "macs" else self.graph.params(flat))

    # ------------------------------------------------------------------------------------------ latency
    def _count_distribution(self, factor, offsets, fqn: str):
        """``(kept counts, probabilities)`` of one size factor of a layer: fixed, or a searched group's widths."""
        if isinstance(factor, (int, np.integer)):
            return torch.tensor([float(factor)]), None
        size, idx = factor
        idx = np.asarray(idx)
        touched = [gid for gid, (lo, hi) in offsets.items() if ((idx >= lo) & (idx < hi)).any()]
        if not touched:
            return torch.tensor([float(size)]), None
        gid = touched[0]
        lo, hi = offsets[gid]
        if len(touched) > 1 or len(idx) != hi - lo:
            raise ConfigError(f"layer {fqn!r}: its channels come from several groups or part of one; the expected "
                              f"latency needs each timed layer's channels from one searched group")
        d = self.dists[gid]
        return (size - d.width + d.candidates).double(), d.probs().double()

    def expected_latency(self, table) -> torch.Tensor:
        """Expected milliseconds of the model under the distributions: per timed layer of ``table`` the exact
        expectation of its table time over its input and output width distributions (independent groups; a
        depthwise convolution or BatchNorm: one width), plus the table's residual (dense time minus the layers'
        time), which is held constant. Exact at one-hot distributions."""
        starts = np.cumsum([0] + [g.width for g in self.graph.groups])
        offsets = {g.id: (int(starts[i]), int(starts[i + 1])) for i, g in enumerate(self.graph.groups)
                   if g.id in self.dists}
        terms = dict(self.graph.param_terms)
        total = torch.zeros((), dtype=torch.float64)
        for fqn, spec in table.layers.items():
            fs = terms.get(f"{fqn}.weight" if fqn else "weight")
            if fs is None:
                raise ConfigError(f"the latency table's layer {fqn!r} is not in this graph; measure a table for it")
            one_d = spec["kind"].startswith("batchnorm") or spec.get("dw")
            c_out, p_out = self._count_distribution(fs[0], offsets, fqn)
            if one_d:
                ms = torch.tensor([table.layer_ms(fqn, int(c), int(c)) for c in c_out], dtype=torch.float64)
                total = total + (ms[0] if p_out is None else (p_out * ms).sum())
                continue
            c_in, p_in = self._count_distribution(fs[1], offsets, fqn)
            ms = torch.tensor([[table.layer_ms(fqn, int(a), int(b)) for b in c_out] for a in c_in],
                              dtype=torch.float64)
            w_in = torch.ones(1, dtype=torch.float64) if p_in is None else p_in
            w_out = torch.ones(1, dtype=torch.float64) if p_out is None else p_out
            total = total + w_in @ ms @ w_out
        residual = (table.dense_ms or 0.0) - table.layers_ms()
        return total + residual


def tau_schedule(epoch: int, epochs: int, tau_max: float, tau_min: float) -> float:
    """TAS's temperature: linear from ``tau_max`` at the first epoch to ``tau_min`` at the last."""
    if epochs <= 1:
        return float(tau_max)
    return float(tau_max - (tau_max - tau_min) * epoch / (epochs - 1))



class DataHalves:
    """The two halves of a differentiable search's training data: iterating yields the even batches (for the
    weights) and holds each one's odd partner in ``arch`` (for the architecture step that follows it); a lone
    last batch serves both. ``arch`` holds only the partner of the batch yielded last, so a training loop that
    replays the batches of an interrupted epoch (resume) leaves it paired as in the uninterrupted run. ``len``
    is the number of weight batches.

    Example:
        >>> h = DataHalves([1, 2, 3]); it = iter(h); next(it), list(h.arch)
        (1, [2])
        >>> next(it), list(h.arch)
        (3, [3])
    """

    def __init__(self, data):
        self.data, self.arch = data, collections.deque()

    def __len__(self) -> int:
        return (len(self.data) + 1) // 2

    def __iter__(self):
        it = iter(self.data)
        for a in it:
            b = next(it, None)
            self.arch.clear()
            self.arch.append(a if b is None else b)
            yield a
