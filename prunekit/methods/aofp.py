"""AOFP: find useless filters by a binary search over halves, judged by the damage of masking them.

Paper: Xiaohan Ding, Guiguang Ding, Yuchen Guo, Jungong Han, Chenggang Yan, "Approximated Oracle Filter
Pruning for Destructive CNN Width Optimization", ICML 2019. https://arxiv.org/abs/1905.04748 (reference
code, read to understand: github.com/DingXiaoH/AOFP, ``aofp/aofp_conv.py``).

Oracle pruning would remove each filter in turn and measure the damage, which is far too costly. AOFP
approximates it: alongside the normal forward, an ablation path masks a random half of a layer's current
search space of filters and measures the damage ``t = ||y - y_hat||^2 / ||y||^2`` at the next layer's output;
every masked filter is credited with ``t`` and the credits are averaged over iterations. After
``iters_per_half`` iterations, if the k-th smallest average (k = half the search space) is below ``thresh``,
those k filters are pruned for good and the search starts again over the layer's remaining filters;
otherwise the search space shrinks to its lowest-damage half, down to single filters. Every layer is
searched at once until the FLOPs target is reached, and the network is fine-tuned.

Here the network's weights stay as they are during the search (the paper keeps training the base path);
the two paths are one forward of the calibration batches with the filters already pruned masked, and, for
every searched layer, its readers run again on their masked input. A layer is searched when its filters
have one producer and are read only by Linear / Conv2d layers (not a channel tied by a residual sum). When
every search has ended above the threshold before the target, ``thresh`` is multiplied by
``thresh_growth`` and the searches restart (ours; ``thresh_growth=1`` keeps the paper's fixed threshold and
stops there). The found filters are cut by the structural engine.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..api import plan_channels, prune_
from ..criteria.collect import collect
from ..errors import ConfigError
from ._config import MethodConfig, option
from ._filter_common import _graph, filter_groups
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["AOFPConfig", "LayerSearch", "damage", "damage_terms", "run"]


@dataclass(frozen=True)
class AOFPConfig(MethodConfig):
    iters_per_half: int = option(1000, ge=1)  # iterations each half is evaluated (authors' do_aofp: 1000)
    thresh: float = option(0.01, ge=0)  # damage below which the k lowest filters are pruned (authors: 0.01)
    thresh_growth: float = option(2.0, ge=1)  # ours: thresh x this when every search ends before the target;
    # 1 = the paper's fixed threshold (the run may then stop short of the target)
    max_iters: int = option(100000, ge=1)  # ours: a cap on search iterations (calibration batches run)


def _shape(mod: nn.Module, x: torch.Tensor) -> list:
    """How a per-input-position mask broadcasts over ``x`` (Conv2d: the channel dim; Linear: the features)."""
    return [1, -1] + [1] * (x.dim() - 2) if isinstance(mod, nn.Conv2d) else [1] * (x.dim() - 1) + [-1]


def _width(mod: nn.Module, x: torch.Tensor) -> int:
    return x.shape[1] if isinstance(mod, nn.Conv2d) else x.shape[-1]


def damage_terms(mod: nn.Module, x: torch.Tensor, keep: torch.Tensor) -> tuple[float, float]:
    """``(||mod(x) - mod(x * keep)||^2, ||mod(x)||^2)``; ``keep`` is 0 at masked input positions."""
    with torch.no_grad():
        y = mod(x)
        y_hat = mod(x * keep.to(x).view(_shape(mod, x)))
    return float((y - y_hat).double().pow(2).sum()), float(y.double().pow(2).sum())


def damage(mod: nn.Module, x: torch.Tensor, keep: torch.Tensor) -> float:
    """AOFP's ``t = ||y - y_hat||^2 / ||y||^2`` at ``mod``'s output when ``keep`` masks its input."""
    num, den = damage_terms(mod, x, keep)
    return num / max(den, 1e-300)


@dataclasses.dataclass
class LayerSearch:
    """One layer's binary search: filters still ``alive``, the current search ``space``, each filter's
    summed damage credits and counts in this half, and the filters pruned in the order found."""

    width: int
    alive: np.ndarray = None
    space: list = None
    sums: np.ndarray = None
    counts: np.ndarray = None
    iters: int = 0
    pruned: list = dataclasses.field(default_factory=list)
    halvings: int = 0

    def __post_init__(self):
        self.alive = np.ones(self.width, dtype=bool) if self.alive is None else self.alive
        self.restart()

    def restart(self) -> None:
        self.space = np.nonzero(self.alive)[0].tolist()
        self.sums, self.counts, self.iters = np.zeros(self.width), np.zeros(self.width), 0

    @property
    def searching(self) -> bool:
        return len(self.space) >= 2

    def trial(self, gen: torch.Generator) -> list:
        """A random half (``len(space) // 2`` filters) of the search space."""
        k = len(self.space) // 2
        pick = torch.randperm(len(self.space), generator=gen)[:k].tolist()
        return sorted(self.space[i] for i in pick)

    def credit(self, masked: list, t: float) -> None:
        self.sums[masked] += t
        self.counts[masked] += 1
        self.iters += 1

    def decide(self, thresh: float) -> list:
        """After a half's iterations: prune the k lowest-damage filters when the k-th is below ``thresh``
        (returns them), else halve the space to them (returns [])."""
        k = len(self.space) // 2
        avg = {i: self.sums[i] / self.counts[i] if self.counts[i] else np.inf for i in self.space}
        low = sorted(self.space, key=lambda i: (avg[i], i))[:k]
        if avg[low[-1]] < thresh:
            self.alive[low] = False
            self.pruned += sorted(low)
            self.restart()
            return sorted(low)
        self.space, self.halvings = sorted(low), self.halvings + 1
        self.sums, self.counts, self.iters = np.zeros(self.width), np.zeros(self.width), 0
        return []


def _readers(mods: dict, group) -> list:
    return [(m.fqn.rpartition(".")[0], m) for m in group.members
            if m.role == "consumer" and m.fqn.endswith(".weight") and m.dim == 1 and m.fqn.rpartition(".")[0] in mods]


def _keep(member, n_in: int, off) -> torch.Tensor:
    """Input-position mask of a reader: 0 where the position reads a channel in ``off``."""
    ch = torch.as_tensor(member.channel, dtype=torch.long)
    keep = torch.ones(n_in)
    if len(off):
        keep[torch.isin(ch, torch.as_tensor(sorted(off), dtype=torch.long))] = 0.0
    return keep


@register_method("aofp", config=AOFPConfig, kind="structured", needs=("calib",), smoke={"iters_per_half": 2},
                 status="partial", left_out=(
    "the base path's training during the search and its warm-up (the weights stay fixed; the shared fine-tune "
    "runs afterwards); channels tied by a residual sum are not searched; thresh_growth (ours, on by default) "
    "raises the threshold when every search ends before the target"),
                 telemetry=Telemetry(
                     keys=("iterations", "trials", "filters_found", "layers_pruned", "halvings", "thresh_final",
                           "target_met"),
                     engaged=lambda t: t["filters_found"] >= 1,
                     what="the binary search over halves finding filters whose masking does no damage",
                     knob="raise options.thresh (damage below which a half is pruned) or options.thresh_growth, or "
                          "give more calibration batches / options.iters_per_half"))
def run(ctx: RunContext, cfg: AOFPConfig) -> MethodResult:
    model = ctx.model
    graph = _graph(model, ctx)
    mods = dict(model.named_modules())
    searched = {}
    for fg in filter_groups(model, ctx, graph):
        readers = _readers(mods, fg.group)
        if len(fg.convs) == 1 and readers and all(isinstance(mods[f], (nn.Conv2d, nn.Linear)) for f, _ in readers):
            searched[fg.key] = (fg, readers)
    if not searched:
        raise ConfigError(f"method 'aofp': model={type(model).__name__} has no layer whose filters are read only by "
                          f"Linear / Conv2d layers; AOFP measures the damage at the next layer's output")
    batches = list(ctx.calib)
    cost = graph.macs if ctx.target_kind == "macs" else graph.params
    budget = cost() * ctx.target_value
    state = {k: LayerSearch(fg.width) for k, (fg, _) in searched.items()}
    reader_fqns = sorted({f for _, rs in searched.values() for f, _ in rs})

    def cost_now() -> float:
        return cost(graph.removed_flat({searched[k][0].group.id: np.array(s.pruned, dtype=np.int64)
                                        for k, s in state.items() if s.pruned}))

    def base_mask(mod_fqn):  # the pruned filters stay masked in the base path (pre-hook on every reader)
        def hook(mod, args):
            x = args[0]
            for k, (fg, readers) in searched.items():
                for f, member in readers:
                    if f == mod_fqn and state[k].pruned:
                        x = x * _keep(member, _width(mod, x), state[k].pruned).to(x).view(_shape(mod, x))
            return (x, *args[1:])
        return hook

    gen = torch.Generator().manual_seed(ctx.seed)
    thresh, it, trials, met = cfg.thresh, 0, 0, cost_now() <= budget
    handles = [mods[f].register_forward_pre_hook(base_mask(f)) for f in reader_fqns]
    try:
        with torch.no_grad():
            while not met and it < cfg.max_iters:
                if not any(s.searching for s in state.values()):
                    if cfg.thresh_growth <= 1 or thresh <= 0:
                        break
                    thresh *= cfg.thresh_growth
                    for s in state.values():
                        s.restart()
                    continue
                cal = collect(model, [batches[it % len(batches)]], inputs=reader_fqns)
                it += 1
                for k, (fg, readers) in searched.items():
                    s = state[k]
                    if not s.searching:
                        continue
                    masked = s.trial(gen)
                    off = set(s.pruned) | set(masked)
                    num = den = 0.0
                    for f, member in readers:
                        mod = mods[f]
                        for x in cal.inputs[f]:  # x already has the pruned filters masked
                            x = x.to(ctx.device)
                            a, b = damage_terms(mod, x, _keep(member, _width(mod, x), off))
                            num, den = num + a, den + b
                    s.credit(masked, num / max(den, 1e-300))
                    trials += 1
                    if s.iters >= cfg.iters_per_half and s.decide(thresh):
                        log.debug("aofp: %s prunes %s (thresh %.3g)", k, s.pruned, thresh)
                        if cost_now() <= budget:
                            met = True
                            break
    finally:
        for h in handles:
            h.remove()
    removal = {k: sorted(s.pruned) for k, s in state.items() if s.pruned}
    report = prune_(model, plan_channels(model, ctx.example_inputs, removal, ignore=list(ctx.ignore))) if removal else None
    if not met:
        log.warning("aofp: the search ended before the target %s (%d filters found, thresh %.3g)", ctx.target,
                    sum(len(v) for v in removal.values()), thresh)
    telemetry = {"iterations": it, "trials": trials, "filters_found": sum(len(v) for v in removal.values()),
                 "layers_pruned": len(removal), "halvings": sum(s.halvings for s in state.values()),
                 "thresh_final": thresh, "target_met": bool(met)}
    info = {"found": {k: list(s.pruned) for k, s in state.items()}, "searched_layers": sorted(searched),
            "engine_report": report.to_dict() if report else None}
    return MethodResult(model=model, info=info, telemetry=telemetry)
