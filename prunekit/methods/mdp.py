"""MDP: prune channels and the spatial resolution of each conv's input together, both selected by training.

Paper: Jinyang Guo, Wanli Ouyang, Dong Xu, "Multi-Dimensional Pruning: A Unified Framework for Model
Compression", CVPR 2020 (oral).
https://openaccess.thecvf.com/content_CVPR_2020/html/Guo_Multi-Dimensional_Pruning_A_Unified_Framework_for_Model_Compression_CVPR_2020_paper.html

MDP treats the size of a layer's input as a second dimension to prune besides its channels. Each convolution of
a pre-trained network is over-parameterised into parallel branches: a branch shrinks the layer input by one
candidate scale factor, convolves, and enlarges the result back to the original size, so the layers after it
see the shapes they expect; a learned selection weights the branches. Every output channel also gets a scalar
gate, its importance, pushed toward zero by a sparsity term. Weights, gates and selections are trained together
(the compression stage); then each layer keeps only its selected branch, the channels with small gates are
removed, and the compact network is fine-tuned. The paper's 3D (spatio-temporal) form for video networks is the
same with time as a third axis; only the 2D form is built here.

Here (the reference code is not public, so the following are ours, each an option): the branches are
:class:`~prunekit.models.resolution.MultiResolutionConv` (bilinear down/up-sampling, candidate scales 1 and 0.5 as
the entry's check uses, each branch its own copy of the pre-trained conv), mixed by a softmax over per-layer
logits trained with Adam; the gates are :class:`~prunekit.methods._filter_common.ChannelGates` on the
BatchNorm outputs, trained by accelerated proximal gradient under an L1 term (sss's update) so that gates reach
exact zeros; a cost term ``cost_weight * max(0, E[MACs] / dense MACs - target)`` (E over the branch
probabilities, channels counted by the clamped mean gate of each layer's input and output) steers the compression
toward the requested MACs. After training each layer's branch of highest probability is fixed (a plain conv at
scale 1; with ``fix="budget"``, the default, the least probable reductions go back to full resolution while the
model is below the target, so that channels remain to be cut), the gates are folded into the BatchNorms, and the
engine removes the channels of lowest gate, globally, until the model keeps ``target`` of the original MACs,
counting the convs at reduced resolution and the resampling (4 MACs per resampled element and channel). The
fine-tune is the protocol's.

A conv gets resolution branches when it is an ``nn.Conv2d`` with a kernel larger than 1x1 whose input, shrunk by
the smallest scale, is still at least 2x2 and not in ``ignore``: 1x1 convs (pointwise and strided shortcut
projections, whose outputs must align pixel for pixel with the main path, and whose cost is small) and maps
already too small keep their full resolution.

Telemetry: the scale chosen per layer, the fraction of conv layers at reduced resolution, the fraction of gates
exactly zero before the cut, and the fraction of the original MACs saved by resolution and by channels. The
mechanism engaged when some layer runs at reduced resolution or some gate reached exactly zero.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..criteria.collect import collect
from ..errors import ConfigError
from ..graph import build_graph
from ..models.resolution import RESAMPLE_TAPS, MultiResolutionConv, conv_out_size, reduced_size
from ..train import fit
from ..train.callbacks import Callback
from ..train.config import method_train_config
from ._config import MethodConfig, option
from ._filter_common import (ChannelGates, _graph, bn_layers, cut_to_target, filter_groups, require_bn,
                             require_prune_epochs, select_to_target)
from ._regularizers import APGGates
from ._registry import MethodResult, RunContext, Telemetry, register_method


@dataclass(frozen=True)
class MDPConfig(MethodConfig):
    scales: tuple[float, ...] = (1.0, 0.5)  # candidate scale factors (paper: not given; entry's check: {1, 0.5})
    resolution: bool = True  # the resolution dimension; False = channel-only gating (the entry's comparison)
    strength: float = option(1e-3, ge=0)  # L1 weight on the gates (paper: not given; ours, gates reach zeros here)
    momentum: float = option(0.9, ge=0, lt=1)  # APG momentum of the gate update (ours: sss's update)
    # weight of the MACs-above-target term (paper: not given; ours: on the small VGG in 2 epochs, 2 left every
    # gate non-zero and 17.0% after the cut, 20 zeroes 5% of the gates and keeps 84.3%; docs/methods-weight-8.md)
    cost_weight: float = option(20.0, ge=0)
    selector_lr: float = option(0.05, gt=0)  # Adam lr of the branch logits (paper: not given; ours)
    temperature: float = option(1.0, gt=0)  # softmax temperature of the branch selection (ours)
    gate_lr: float = option(0.1, gt=0)  # step size of the gates' APG update (ours; the loop's lr moves them too little)
    # how the scale is fixed: argmax = paper (each layer keeps its most probable branch, which can overshoot the
    # target with no channel left to cut); budget = ours: the least probable reductions go back to full
    # resolution while the model is below the target, so the channel cut meets the target exactly
    fix: Literal["argmax", "budget"] = "budget"


def eligible_convs(model: nn.Module, example_inputs, min_scale: float, ignore=()) -> dict[str, tuple]:
    """``{fqn: input [N, C, H, W] shape}`` of the convs that get resolution branches (module docstring's rule)."""
    convs = [n for n, m in model.named_modules() if type(m) is nn.Conv2d and n not in set(ignore)]
    shapes: dict[str, tuple] = {}

    def seen(name, args):
        shapes.setdefault(name, tuple(args[0].shape))

    if convs:
        collect(model, [(example_inputs, None)], watch=convs, on_input=seen)
    mods = dict(model.named_modules())
    return {n: s for n, s in shapes.items() if max(mods[n].kernel_size) > 1
            and min(reduced_size(h, min_scale) for h in s[-2:]) >= 2}


class ExpectedCost:
    """The expected fraction of the original MACs, differentiable in the gates and the branch probabilities.

    Per MAC-issuing module of the original graph: its MACs times, for a branched conv, ``sum_s p_s * r_s`` with
    ``r_s`` the branch's cost relative to the full-resolution conv (conv at the reduced size plus resampling),
    and the clamped mean gate of the channel groups it reads and writes (1 where a side has no gate).
    """

    def __init__(self, model: nn.Module, ctx, gated: list[str], branches: dict[str, MultiResolutionConv],
                 shapes: dict[str, tuple]):
        graph = _graph(model, ctx)  # traced before the gates' hooks and the branches are attached
        self.dense = float(graph.macs())
        mods = dict(model.named_modules())
        writes, reads = {}, {}
        for g in filter_groups(model, ctx, graph):
            bn = next((b for b in g.bns if b in gated), None)
            if bn is None:
                continue
            for m in g.group.members:
                owner, _, pname = m.fqn.rpartition(".")
                if pname == "weight" and isinstance(mods.get(owner), (nn.Conv2d, nn.Linear)):
                    (writes if m.role == "producer" and m.dim == 0 else reads)[owner] = bn
        self.terms = []
        for fqn, macs in graph.macs_per_module().items():
            rel = None
            if fqn in branches:
                rel = [self._relative(mods[fqn], shapes[fqn], s) for s in branches[fqn].scales]
            self.terms.append((float(macs), fqn, writes.get(fqn), reads.get(fqn), rel))
        self.branches = branches
        self.gates: ChannelGates | None = None  # bound once the gates exist (their hooks would hide the groups)

    @staticmethod
    def _relative(conv: nn.Conv2d, shape: tuple, s: float) -> tuple[float, float, float]:
        """(conv, downsampling, upsampling) MACs of the branch at scale ``s`` over the full conv's MACs."""
        n, cin, h, w = shape
        ho, wo = conv_out_size(conv, (h, w))
        full = n * ho * wo * conv.out_channels * (cin // conv.groups) * conv.kernel_size[0] * conv.kernel_size[1]
        if s == 1.0:
            return 1.0, 0.0, 0.0
        hs, ws = reduced_size(h, s), reduced_size(w, s)
        hso, wso = conv_out_size(conv, (hs, ws))
        down = RESAMPLE_TAPS * n * cin * hs * ws
        up = RESAMPLE_TAPS * n * conv.out_channels * ho * wo
        return hso * wso / (ho * wo), down / full, up / full

    def _frac(self, bn):
        return self.gates.gates[bn].clamp(0, 1).mean() if bn is not None else 1.0

    def __call__(self) -> torch.Tensor:
        total = 0.0
        for macs, fqn, out_bn, in_bn, rel in self.terms:
            fo, fi = self._frac(out_bn), self._frac(in_bn)
            if rel is None:
                total = total + macs * fo * fi
                continue
            p = self.branches[fqn].probabilities()
            for i, (c, d, u) in enumerate(rel):
                total = total + macs * p[i] * (c * fo * fi + d * fi + u * fo)
        return total / self.dense


class MDPCompression(Callback):
    """The compression stage's extra terms: the MACs-above-target penalty and the branch selectors' Adam step."""

    def __init__(self, cost: ExpectedCost, target: float, weight: float, logits: list, lr: float):
        self.cost, self.target, self.weight = cost, float(target), float(weight)
        self.logits = logits
        self.opt = torch.optim.Adam(logits, lr=lr) if logits else None
        self.last = float("nan")

    def on_before_backward(self, state) -> None:
        if self.weight == 0:
            return
        expected = self.cost()
        self.last = float(expected.detach())
        state.loss = state.loss + self.weight * torch.relu(expected - self.target)

    def on_after_backward(self, state) -> None:
        if self.opt is not None:
            if any(t.grad is not None for t in self.logits):
                self.opt.step()
            self.opt.zero_grad(set_to_none=True)


def _fix_scales(model: nn.Module, ctx, branches: dict[str, MultiResolutionConv], budget: float, fix: str):
    """Replace every branched conv by its selected branch; with ``fix="budget"`` the reduced layers of least
    selection probability go back to full resolution (scale 1) while the model's MACs are below ``budget``.
    Returns ``({fqn: scale}, layers reverted)``."""
    chosen, confidence = {}, {}
    with torch.no_grad():
        for f, b in branches.items():
            i = b.selected()
            chosen[f], confidence[f] = b.scales[i], float(b.probabilities()[i])
            model.set_submodule(f, b.collapse())
    reverted = 0
    if fix == "budget":
        for f in sorted((f for f, s in chosen.items() if s < 1), key=lambda f: confidence[f]):
            if build_graph(model, ctx.example_inputs).macs() >= budget:
                break
            full = branches[f].branches[branches[f].scales.index(max(branches[f].scales))]
            model.set_submodule(f, full.to_conv() if full.scale == 1.0 else copy.deepcopy(full))
            chosen[f], reverted = full.scale, reverted + 1
    return chosen, reverted


@register_method(
    "mdp", config=MDPConfig, status="partial", kind="structured", needs=("train",), targets=("macs",),
    targets_why="it trades resolution against channels on the MACs, and a resolution branch removes no parameter",
    left_out="The 3D (spatio-temporal) form for video networks is not built (no 3D model or video data here); "
             "the 2D spatial form is. The paper's gate parameterisation, selection rule, regulariser weights and "
             "schedules are not public: ours are options (module docstring).",
    telemetry=Telemetry(
        keys=("scales", "reduced_fraction", "zero_gate_fraction", "macs_saved_resolution", "macs_saved_channels"),
        engaged=lambda t: t["reduced_fraction"] > 0 or t["zero_gate_fraction"] > 0,
        what="the learned selection of a reduced resolution or of channels switched off by their gates",
        knob="raise options.cost_weight, options.strength or prune_epochs (resolution=False turns the "
             "resolution dimension off)"))
def run(ctx: RunContext, cfg: MDPConfig) -> MethodResult:
    require_bn(ctx.model, "mdp")
    require_prune_epochs(ctx, "mdp")
    if any(not 0 < s <= 1 for s in cfg.scales) or not cfg.scales:
        raise ConfigError(f"options['scales']={list(cfg.scales)!r}: candidate scale factors must be in (0, 1] (1 = "
                          f"full resolution); give e.g. options={{'scales': [1.0, 0.5]}}")
    model = ctx.model
    dense = build_graph(model, ctx.example_inputs).macs()
    shapes = eligible_convs(model, ctx.example_inputs, min(cfg.scales), ctx.ignore) if cfg.resolution else {}
    branches = {f: MultiResolutionConv(model.get_submodule(f), cfg.scales, cfg.temperature) for f in shapes}
    gated = [f for f, _ in bn_layers(model)]
    cost = ExpectedCost(model, ctx, gated, branches, shapes)  # the original graph, before hooks and branches
    gates = cost.gates = ChannelGates(model, gated)
    for f, b in branches.items():
        model.set_submodule(f, b)
    comp = MDPCompression(cost, ctx.target_value, cfg.cost_weight, [b.logits for b in branches.values()],
                          cfg.selector_lr)
    apg = APGGates(gates, cfg.strength, cfg.momentum, lr=cfg.gate_lr)
    fit(model, ctx.train_data, method_train_config(ctx), callbacks=[comp, apg])

    chosen, reverted = _fix_scales(model, ctx, branches, ctx.target_value * dense, cfg.fix)
    zero = apg.zero_fraction()
    scores = {f: g.detach().clone() for f, g in gates.gates.items()}
    gates.fold_()
    fixed = build_graph(model, ctx.example_inputs).macs()
    cut_ctx = copy.copy(ctx)
    cut_ctx.target = f"macs={min(1.0, ctx.target_value * dense / fixed):.12g}"
    sel, _ = select_to_target(model, cut_ctx, scores, "global")
    report = cut_to_target(model, cut_ctx, scores, allocation="global") if sel else {"removed_channels": 0}
    after = build_graph(model, ctx.example_inputs).macs()
    n_conv = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    reduced = sum(s < 1 for s in chosen.values())
    telemetry = {"scales": " ".join(f"{s:g}" for s in chosen.values()), "reduced_fraction": reduced / max(n_conv, 1),
                 "zero_gate_fraction": zero,
                 "macs_saved_resolution": (dense - fixed) / dense, "macs_saved_channels": (fixed - after) / dense}
    report.update({"target": ctx.target, "dense_macs": int(dense), "pruned_macs": int(after),
                   "kept_macs_fraction": after / dense})
    return MethodResult(model=model, telemetry=telemetry,
                        info={"epochs_trained": ctx.prune_epochs, "reduced_layers": reduced,
                              "scale_per_layer": chosen, "branched_layers": len(branches),
                              "reverted_layers": reverted, "expected_macs_last": comp.last,
                              "macs_after_selection": int(fixed), **report})
