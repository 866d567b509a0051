"""RNP: runtime neural pruning, a Q-learning agent that decides per input how much of each layer to compute.

Paper: Ji Lin, Yongming Rao, Jiwen Lu, Jie Zhou, "Runtime Neural Pruning", NeurIPS 2017.
https://papers.nips.cc/paper/6813-runtime-neural-pruning

The backbone keeps all its weights; for every input, layer by layer from the bottom, a decision network chooses
how many of the layer's ordered channel groups to compute. The choice is a Markov decision process: the state is
an encoding of the current feature map read by a recurrent network shared by all layers, the actions are
"compute the first i groups" (i = 1..k), each step costs a penalty p per computed group and the episode ends
with the negative classification loss. The agent is trained by deep Q-learning with epsilon-greedy exploration,
alternating with training the backbone under the decisions it samples; at test time it acts greedily, so easy
inputs get fewer groups. Here the groups are the conv's output channels in their order (k = 4), the encoding is
a global average pool and a linear layer per layer before a shared GRU cell, the Q-update runs after every
training step of the backbone (also during the fine-tune: the callback is returned), and the gated model runs
only the chosen groups (:mod:`prunekit.surgery.dynamic`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..surgery.dynamic import RNP, GroupSelector, gate_convs_, gated_units
from ..train import Callback, fit
from ..train.config import method_train_config
from ._config import MethodConfig, option
from ._dynamic import DYNAMIC_TARGETS, DenseCost, gate_candidates, macs_stats, varying_fraction
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["RNPConfig", "QLearner", "q_targets", "run"]


@dataclass(frozen=True)
class RNPConfig(MethodConfig):
    groups: int = option(4, ge=2)  # k ordered channel groups per layer (entry: k = 4)
    # p, the reward -p per computed group (sec. 3.3); None: steered to the target (ours)
    penalty: float | None = option(None, ge=0)
    epsilon: float = option(0.1, ge=0, le=1)  # epsilon-greedy exploration (sec. 3.4; value not found: ours)
    gamma: float = option(1.0, ge=0, le=1)  # discount of the episode (ours: undiscounted, one short episode per input)
    hidden: int = option(32, ge=1)  # size of the encoding and of the GRU state (paper: not found; ours)
    q_lr: float = option(1e-3, gt=0)  # Adam step of the decision network (paper: not found; ours)
    steer_rate: float = option(1.0, gt=0)  # ours: p <- p * exp(rate * (macs / target - 1)) per step, p steered
    skip_first: bool = True  # ours: the first conv reads the image (1-3 channels) and stays dense


def q_targets(rewards: torch.Tensor, next_max: torch.Tensor, final: torch.Tensor, gamma: float) -> torch.Tensor:
    """Q-learning targets of one episode per row: ``y_t = r_t + gamma * max_a Q(s_{t+1}, a)`` for t < T and
    ``y_T = r_T + final`` (the negative classification loss). ``rewards`` (B, T), ``next_max`` (B, T - 1)."""
    y = rewards.clone()
    y[:, :-1] += gamma * next_max
    y[:, -1] += final
    return y


class QLearner(Callback):
    """After each training step of the backbone: one Q-learning step of the decision network on the episodes
    that step played (epsilon-greedy), and, when p is steered, p moved towards the MACs target."""

    def __init__(self, agent, units, cost: DenseCost, cfg: RNPConfig, target: float, penalty: float):
        self.agent, self.units, self.cost, self.cfg, self.target = agent, units, cost, cfg, target
        self.penalty = penalty
        params = list(agent.parameters()) + [p for u in units for p in u.selector.encode.parameters()]
        self.params = params
        self.opt = torch.optim.Adam(params, lr=cfg.q_lr)
        self.updates = 0
        self.last_q_loss = 0.0

    def on_train_start(self, state):
        self.agent.epsilon = self.cfg.epsilon

    def on_train_end(self, state):
        self.agent.epsilon = 0.0

    def on_before_backward(self, state):
        trace = self.agent.trace
        if not trace or state.outputs is None:
            return
        q = torch.stack([t[0] for t in trace], 1)  # (B, T, A)
        a = torch.stack([t[1] for t in trace], 1)  # (B, T)
        ce = F.cross_entropy(state.outputs.detach(), state.targets, reduction="none")
        rewards = -self.penalty * (a + 1).to(q.dtype)  # -p per computed group
        with torch.no_grad():
            y = q_targets(rewards, q[:, 1:].max(2).values, -ce, self.cfg.gamma)
        loss = F.mse_loss(q.gather(2, a[..., None]).squeeze(2), y)
        self.opt.zero_grad()
        loss.backward(inputs=self.params)
        self.opt.step()
        for p in self.params:  # the backbone's optimizer must not step the agent
            p.grad = None
        self.updates += 1
        self.last_q_loss = float(loss.detach())
        greedy = self.agent.greedy
        if self.cfg.penalty is None and greedy is not None and bool(greedy.any()):
            # the cost of the policy as it will run at test time: the inputs decided greedily at every layer
            used = (sum(u.last_macs for u in self.units) + self.cost.rest) / self.cost.total
            used = float(used[greedy.cpu()].mean())
            self.penalty *= math.exp(self.cfg.steer_rate * (used / self.target - 1))
        self.agent.trace = []


@register_method(
    "rnp", config=RNPConfig, kind="other", needs=("train",), status="partial", **DYNAMIC_TARGETS,
    left_out="no replay memory (each Q-step learns from the episodes of the current batch) and the paper's "
             "encoder/RNN sizes are not known; p is steered to the MACs target unless options.penalty is set, "
             "and a cap on the number of groups is added when the greedy policy still exceeds the target",
    telemetry=Telemetry(keys=("q_updates", "macs_mean", "macs_std", "varying", "penalty"),
                        engaged=lambda t: t["q_updates"] > 0 and t["macs_std"] > 0,
                        what="an input-dependent policy learned by Q-learning",
                        knob="raise prune_epochs (Q-learning steps) or options.epsilon"),
    smoke={})
def run(ctx: RunContext, cfg: RNPConfig) -> MethodResult:
    target = float(ctx.target_value)  # executed MACs per input kept (a macs= target: the harness checks)
    model = ctx.model
    x = ctx.example_inputs
    pairs = gate_candidates(model, x, ctx.ignore, cfg.skip_first)
    cost = DenseCost(model, x, [c for c, _ in pairs])
    order = {c: i for i, (c, _) in enumerate(pairs)}
    torch.manual_seed(ctx.seed)
    gate_convs_(model, pairs, RNP, lambda fqn, conv: [cfg.groups, order[fqn], cfg.hidden])
    units = list(gated_units(model).values())
    agent = next(u.selector for u in units if isinstance(u.selector, GroupSelector)).get_agent()
    learner = QLearner(agent, units, cost, cfg, target, 0.1 if cfg.penalty is None else cfg.penalty)
    steps = fit(model, ctx.train_data, method_train_config(ctx), callbacks=[learner]).steps if ctx.prune_epochs else 0
    model.eval()
    calib = ctx.calib or ctx.train_data
    capped = cfg.groups
    while macs_stats(model, cost, calib, limit=2)["macs_mean"] > target and capped > 1:
        capped -= 1  # ours: the greedy policy still runs over the target; forbid the largest actions
        agent.cap.fill_(capped)
    stats = macs_stats(model, cost, ctx.val_data or calib)
    telemetry = {"q_updates": learner.updates, **stats, "varying": varying_fraction(model, ctx.val_data or calib),
                 "penalty": learner.penalty, "cap": capped, "steps": int(steps)}
    log.info("rnp: %d Q-updates, p=%.4g, executed MACs %.3f +- %.3f", learner.updates, learner.penalty,
             stats["macs_mean"], stats["macs_std"])
    return MethodResult(model=model, callbacks=[learner], info={"gated": [c for c, _ in pairs],
                                                                "dense_macs": cost.total}, telemetry=telemetry)
