"""What the dynamic (per-input) methods share: which convs to gate, executed MACs against the dense model,
the density that meets a MACs target, and the per-input statistics their telemetry reports.

The gating block itself (:class:`~prunekit.surgery.dynamic.GatedConv`, its selectors, the gather execution,
save/load) is :mod:`prunekit.surgery.dynamic`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError
from ..measure import count_macs
from ..surgery.dynamic import executed_macs, gated_units
from ._filter_common import conv_bn_pairs

__all__ = ["DYNAMIC_TARGETS", "gate_candidates", "DenseCost", "fit_density", "macs_stats", "varying_fraction"]


#: what the dynamic methods take: their target is the executed MACs per input (checked by the harness)
DYNAMIC_TARGETS = {"targets": ("macs",),
                   "targets_why": "it prunes per input and meets a target on the executed MACs per input: F is the "
                                  "fraction kept"}


def gate_candidates(model: nn.Module, example_inputs, ignore=(), skip_first: bool = True) -> list[tuple[str, str]]:
    """``(conv, bn)`` pairs (data flow order) of the dense convs (groups=1) followed by a BatchNorm2d;
    the first conv of the network is left out when ``skip_first``; names in ``ignore`` (and below them) too."""
    pairs = []
    for conv, bn in conv_bn_pairs(model, example_inputs):
        mod = model.get_submodule(conv)
        if not isinstance(mod, nn.Conv2d) or mod.groups != 1 or not isinstance(model.get_submodule(bn), nn.BatchNorm2d):
            continue
        if any(conv == i or conv.startswith(i + ".") for i in ignore):
            continue
        pairs.append((conv, bn))
    if skip_first and pairs:
        first = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
        pairs = [p for p in pairs if p[0] != first]
    if not pairs:
        raise ConfigError(f"model={type(model).__name__}: no Conv2d (groups=1) followed by a BatchNorm2d to gate "
                          f"(ignore={list(ignore)!r}); dynamic channel gating needs conv-BN pairs")
    return pairs


class DenseCost:
    """The dense model's MACs per input (the project's counter) and the part outside the gated convs."""

    def __init__(self, model: nn.Module, example_inputs, gated: list[str]):
        x = example_inputs[:1]
        count = count_macs(model, x)
        self.total = int(count.total)
        self.rest = int(count.total - sum(count.per_module.get(f, 0) for f in gated))

    def fraction(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Executed MACs per sample of ``x`` as a fraction of the dense model's (counted on the masked path,
        which executes the same channels as the gather path, batched)."""
        return executed_macs(model, x, self.rest, execution="masked") / self.total


def _inputs(batches, limit: int):
    out = []
    for i, b in enumerate(batches):
        if i >= limit:
            break
        out.append(b[0] if isinstance(b, (tuple, list)) else b)
    return out


def macs_stats(model: nn.Module, cost: DenseCost, batches, limit: int = 8) -> dict:
    """Mean, std, min and max over the inputs of ``batches`` (first ``limit``) of the executed MAC fraction."""
    device = next(model.parameters()).device
    fr = torch.cat([cost.fraction(model, x.to(device)) for x in _inputs(batches, limit)])
    return {"macs_mean": float(fr.mean()), "macs_std": float(fr.std()) if fr.numel() > 1 else 0.0,
            "macs_min": float(fr.min()), "macs_max": float(fr.max())}


def fit_density(model: nn.Module, cost: DenseCost, batches, target: float, set_density, steps: int = 12,
                stat: str = "macs_max") -> float:
    """The largest uniform density d in (0, 1] whose executed MACs on ``batches`` (``stat``: ``"macs_max"``,
    every input; ``"macs_mean"``, on average) are at most ``target`` (a fraction of the dense model's);
    ``set_density(d)`` puts d into every unit. Bisection."""
    def cost_at(d):
        set_density(d)
        return macs_stats(model, cost, batches, limit=2)[stat]

    if cost_at(1.0) <= target:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost_at(mid) <= target else (lo, mid)
    d = max(lo, 1e-6)
    if cost_at(d) > target:
        raise ConfigError(f"target macs={target}: even one channel per gated layer executes more; the layers "
                          f"that are not gated cost {cost.rest / cost.total:.3f} of the dense MACs")
    return d


def keep_count(density: float, channels: int) -> int:
    """``ceil(density * channels)``, at least 1."""
    return max(1, math.ceil(density * channels - 1e-9))


@torch.no_grad()
def varying_fraction(model: nn.Module, batches, limit: int = 4) -> float:
    """Fraction of the gated channels kept for some but not all inputs of ``batches`` (input dependence)."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    seen, total = {}, 0
    try:
        for x in _inputs(batches, limit):
            model(x.to(device))
            for name, unit in gated_units(model).items():
                k = unit.last_keep
                s = seen.setdefault(name, [torch.zeros(k.shape[1], dtype=torch.long), 0])
                s[0] += k.sum(0).cpu()
                s[1] += k.shape[0]
    finally:
        model.train(was)
    varying = 0
    for counts, n in seen.values():
        varying += int(((counts > 0) & (counts < n)).sum())
        total += counts.numel()
    return varying / max(1, total)
