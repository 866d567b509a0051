"""DMC: discrete channel gates trained with a straight-through estimator under a resource constraint.

Paper: Shangqian Gao, Feihu Huang, Jian Pei, Heng Huang, "Discrete Model Compression With Resource Constraint
for Deep Neural Networks", CVPR 2020. http://openaccess.thecvf.com/content_CVPR_2020/html/
Gao_Discrete_Model_Compression_With_Resource_Constraint_for_Deep_Neural_Networks_CVPR_2020_paper.html

Every channel of a pre-trained network gets a gate that is exactly 0 or 1: a continuous parameter binarised in
the forward pass, its gradient passed through unchanged (straight-through estimator). So the network that is
optimised is exactly the network that will be deployed, not a relaxation of it. Only the gates are trained,
the weights stay frozen, and the loss is the task loss plus a resource term that penalises the gated network's
FLOPs above the budget; the budget is the single hyper-parameter, and because all gates compete in one loss the
widths of the layers are learned, not set per layer. A stochastic variant adds noise before binarisation to
explore more sub-networks. The channels whose gate is 0 are removed and the compact network is fine-tuned.

Here the gates sit on the output of each prunable channel group (after its BatchNorm where there is one;
channels joined by a residual add share one gate), the FLOPs of the gated network are the engine's MAC counts
per layer scaled by the kept fraction of its input and output channels (exact for Conv/Linear layers at binary
gates), and the resource term is ``log(max(T(g), T_d) / T_d)`` -- the form the authors use in their follow-up
(Gao et al., CVPR 2021); the DMC paper's exact loss was not found in the sources read. The gates are trained for
``ctx.prune_epochs`` epochs by plain SGD; the channels whose gate is 0 are cut through the structural engine. When
the gated network still exceeds the target at the end, the open gates of lowest value go too (ours, reported as
``topped_up``) so the result meets the target; the shared fine-tune follows.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from ..train import fit
from ..train.callbacks import Callback
from ..train.config import method_train_config
from ._config import MethodConfig, option
from ._filter_common import _graph, cut_to_target, filter_groups, require_prune_epochs
from ._regularizers import FreezeExcept
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["DMCConfig", "BinaryGates", "ChannelCostModel", "run"]


@dataclass(frozen=True)
class DMCConfig(MethodConfig):
    strength: float = option(2.0, ge=0)  # lambda, weight of the resource term (ours: the value is not given in
    # the sources read; 0 turns the constraint off)
    gate_lr: float = option(0.2, gt=0)  # plain SGD step on the gate parameters (ours: not given)
    init: float = option(1.0, gt=0)  # initial gate parameter: every gate open (ours)
    noise: float = option(0.0, ge=0)  # stochastic DMC: std of Gaussian noise added before binarisation (sec. 3;
    # 0 = the deterministic version)


class _BinarySTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, theta):
        return (theta > 0).to(theta.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad  # straight-through: d gate / d theta taken as 1


def binarise(theta: torch.Tensor) -> torch.Tensor:
    """``1[theta > 0]`` in the forward pass, identity gradient in the backward pass."""
    return _BinarySTE.apply(theta)


class BinaryGates:
    """One binary gate per channel of each group, multiplying the outputs of the group's modules (hooks).

    ``theta[key]`` holds the continuous parameters; ``gate(key)`` the binary gates of the current forward
    (with ``noise`` added before binarisation while ``training``). The model's modules are unchanged.
    """

    def __init__(self, model: nn.Module, groups, init: float = 1.0, noise: float = 0.0, seed: int = 0):
        mods = dict(model.named_modules())
        dev = next(iter(model.parameters())).device
        self.theta = {g.key: torch.full((g.width,), float(init), device=dev, requires_grad=True) for g in groups}
        self.noise, self.training = float(noise), True
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self._current: dict[str, torch.Tensor] = {}
        self._handles = [mods[f].register_forward_hook(self._hook(g.key))
                         for g in groups for f in (g.bns or g.convs)]

    def gate(self, key: str) -> torch.Tensor:
        th = self.theta[key]
        if self.noise and self.training:
            th = th + self.noise * torch.randn(th.shape, generator=self.generator).to(th)
        return binarise(th)

    def _hook(self, key: str):
        def hook(_mod, _inp, out):
            g = self._current.get(key)
            if g is None:  # one draw per forward, shared by every module of the group
                g = self._current[key] = self.gate(key)
            return out * g.view([1, -1] + [1] * (out.dim() - 2))
        return hook

    def new_forward(self) -> None:
        self._current = {}

    def gates(self) -> dict[str, torch.Tensor]:
        """The gates as binarised now (noise included while training), one draw per key."""
        for k in self.theta:
            if k not in self._current:
                self._current[k] = self.gate(k)
        return self._current

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class ChannelCostModel:
    """MACs (or parameters) of a network whose groups keep ``a_k`` of their ``C_k`` channels, differentiable in
    ``a``: every Conv/Linear layer's dense count times the kept fraction of its output group and of its input
    group. At integer counts this is the engine's exact cost for plain (ungrouped) Conv and Linear layers."""

    def __init__(self, model: nn.Module, graph, groups, kind: str = "macs"):
        layers = (nn.Linear, nn.modules.conv._ConvNd)
        per = graph.macs_per_module() if kind == "macs" else {
            f: m.weight.numel() for f, m in model.named_modules() if isinstance(m, layers)}
        keys = {g.group.id: g for g in groups}
        self.terms = []  # (count, output group key or None, input group key or None)
        out_of, in_of = {}, {}
        for gid, g in keys.items():
            for m in g.group.members:
                mod, _, name = m.fqn.rpartition(".")
                if name != "weight":
                    continue
                if m.role == "producer" and m.dim == 0:
                    out_of[mod] = g.key
                elif m.role == "consumer" and m.dim == 1:
                    in_of[mod] = g.key
        self.widths = {g.key: g.width for g in groups}
        for f, n in per.items():
            if n:
                self.terms.append((float(n), out_of.get(f), in_of.get(f)))
        self.dense = sum(n for n, _, _ in self.terms)

    def __call__(self, kept: dict[str, torch.Tensor]) -> torch.Tensor:
        """Total cost for soft or binary kept counts ``{group key: scalar tensor}`` (missing groups: full)."""
        total = 0.0
        for n, o, i in self.terms:
            f = n
            if o is not None and o in kept:
                f = f * kept[o] / self.widths[o]
            if i is not None and i in kept:
                f = f * kept[i] / self.widths[i]
            total = total + f
        return total if isinstance(total, torch.Tensor) else torch.tensor(total)


def resource_loss(cost: torch.Tensor, budget: float) -> torch.Tensor:
    """``|log(T / T_d)|``: zero at the budget, growing with the relative gap on either side of it."""
    return torch.log(cost.clamp_min(1e-12 * budget) / budget).abs()


class _DMCStep(Callback):
    """Adds the resource term to the loss, then takes an Adam step on the gate parameters only."""

    def __init__(self, gates: BinaryGates, cost: ChannelCostModel, budget: float, strength: float, lr: float):
        self.gates, self.cost, self.budget, self.strength = gates, cost, budget, strength
        self.opt = torch.optim.SGD(list(gates.theta.values()), lr=lr)
        self.curve: list[float] = []

    def on_batch_start(self, state) -> None:
        self.gates.new_forward()

    def on_before_backward(self, state) -> None:
        kept = {k: g.sum() for k, g in self.gates.gates().items()}
        t = self.cost(kept)
        self.curve.append(float(t.detach()) / self.cost.dense)
        if self.strength:
            state.loss = state.loss + self.strength * resource_loss(t, self.budget)

    def on_after_backward(self, state) -> None:
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def _engaged(t: dict) -> bool:
    return sum(t["gates_off"].values()) > 0


@register_method(
    "dmc", config=DMCConfig, kind="structured", needs=("train",), smoke={"gate_lr": 0.5}, status="partial",
    left_out="the paper's exact resource loss, gate optimiser and schedule are not in the sources read: the "
             "resource term is |log(T/T_d)| (the log-ratio of the authors' follow-up, two-sided), the gates are "
             "trained by plain SGD; a top-up (reported as topped_up) removes the lowest open gates when the gated "
             "net ends above the target",
    telemetry=Telemetry(
        keys=("gates_off", "constraint_gap", "gated_cost", "topped_up", "cost_curve"), engaged=_engaged,
        what="binary channel gates switched off by the resource-constrained loss",
        knob="raise options.strength or options.gate_lr, or give more prune_epochs (gates trained with the "
             "weights frozen)"))
def run(ctx: RunContext, cfg: DMCConfig) -> MethodResult:
    require_prune_epochs(ctx, "dmc")
    model = ctx.model
    graph = _graph(model, ctx)
    groups = filter_groups(model, ctx, graph)
    cost = ChannelCostModel(model, graph, groups, ctx.target_kind)
    budget = ctx.target_value * cost.dense
    gates = BinaryGates(model, groups, cfg.init, cfg.noise, ctx.seed)
    step = _DMCStep(gates, cost, budget, cfg.strength, cfg.gate_lr)
    try:
        fit(model, ctx.train_data, method_train_config(ctx), callbacks=[FreezeExcept(model, []), step])
    finally:
        gates.remove()
    theta = {k: t.detach().cpu().clone() for k, t in gates.theta.items()}
    kept = {k: (t > 0).double().sum() for k, t in theta.items()}
    gated_cost = float(cost(kept)) / cost.dense
    off = {k: int((t <= 0).sum()) for k, t in theta.items()}
    # the cut: every closed gate; if the gated net is still above the target, the open gates of lowest value too
    report = cut_to_target(model, ctx, {k: t.double() for k, t in theta.items()}, allocation="global")
    removed = report.get("removed_channels", 0)
    telemetry = {"gates_off": off, "constraint_gap": gated_cost - ctx.target_value, "gated_cost": gated_cost,
                 "topped_up": int(max(0, removed - sum(off.values()))),
                 "cost_curve": step.curve[:: max(1, len(step.curve) // 50)]}
    log.info("dmc: %d gates off, gated %s %.4f for a target of %.4f", sum(off.values()), ctx.target_kind,
             gated_cost, ctx.target_value)
    return MethodResult(model=model, telemetry=telemetry, info={**report, "gated_cost": gated_cost})
