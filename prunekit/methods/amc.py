"""AMC: a DDPG agent choosing each layer's kept fraction, one layer after the other, under a hard budget.

Paper: Yihui He, Ji Lin, Zhijian Liu, Hanrui Wang, Li-Jia Li, Song Han, "AMC: AutoML for Model Compression and
Acceleration on Mobile Devices", ECCV 2018. https://arxiv.org/abs/1802.03494 (reference code, read to
understand: github.com/mit-han-lab/amc, ``env/channel_pruning_env.py``, ``lib/agent.py``, ``amc_search.py``).

Hand-tuned per-layer ratios are costly to find and a uniform ratio ignores how differently layers tolerate
pruning. AMC walks the prunable layers in order; for each it shows a reinforcement-learning agent an
11-number description of the layer (index, channels in and out, feature-map size, stride, kernel, its FLOPs,
the FLOPs already cut, the FLOPs the later layers can still cut, the previous action) and the agent answers
with a continuous action: the fraction of channels the layer keeps, in [0.2, 1]. In the resource-constrained
mode the action is clipped (the "action wall") so that even with every later layer at the lower bound the
whole network still meets the budget: every policy the agent plays is feasible. After the last layer the
pruned network is scored without fine-tuning and the score is the reward of every step of the episode. The
agent is DDPG (deterministic actor and a critic, target networks updated softly, a replay buffer, rewards
minus their moving average, discount 1): the first episodes act at random (warm-up), later ones follow the
actor plus truncated-normal exploration noise whose width shrinks by a constant factor every episode.

Here a layer is a prunable segment of :class:`prunekit.api.Subnets` (channels coupled by a residual sum are
one decision), channels inside it go by the L1 criterion, and an episode's sub-network is scored by the search
block's evaluator (adaptive BatchNorm on a few training batches, accuracy on held-out training images) on a
masked view of the model; the budget may be MACs, parameters or (through :func:`amc_search`) the predicted
latency of :mod:`prunekit.measure.latency_table`. The best policy found is cut physically.
"""
from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch
from torch import nn

from ..allocate.search import SearchBudget, SearchRecord, SearchSpace, run_search, widest_within
from ..api import Subnets, prune_
from ..data import first_batches, first_examples
from ..errors import ConfigError
from ..measure.timing import call_model
from ..train.search import target_cost
from ..train.subnet_eval import SubnetEvaluator, recalibrate_bn
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["AMCConfig", "DDPG", "amc_search", "action_wall", "layer_embedding", "run"]


@dataclass(frozen=True)
class AMCConfig(MethodConfig):
    episodes: int = option(800, ge=1)  # episodes = scored policies, warm-up included (code: train_episode 800)
    warmup: int = option(100, ge=0)  # episodes of random actions before the agent learns (code: warmup 100)
    lbound: float = option(0.2, gt=0, le=1)  # smallest kept fraction of a layer (code: lbound 0.2)
    rbound: float = option(1.0, gt=0, le=1)  # largest kept fraction (code: rbound 1)
    round_to: int = option(8, ge=1)  # kept channels in multiples of this (code: channel_round 8)
    hidden: int = option(300, ge=1)  # actor/critic hidden units, two layers (code: hidden1 = hidden2 = 300)
    lr_actor: float = option(1e-4, gt=0)  # actor Adam lr (code: lra 1e-4)
    lr_critic: float = option(1e-3, gt=0)  # critic Adam lr (code: lrc 1e-3)
    tau: float = option(0.01, gt=0, le=1)  # soft target update (code: tau 0.01)
    batch: int = option(64, ge=1)  # replay minibatch (code: bsize 64)
    memory_per_layer: int = option(100, ge=1)  # replay size per layer (code: rmsize 100, times the layers)
    discount: float = option(1.0, ge=0, le=1)  # (code: discount 1)
    init_noise: float = option(0.5, gt=0)  # sigma of the truncated-normal noise (code: init_delta 0.5)
    noise_decay: float = option(0.95, gt=0, le=1)  # sigma *= this per episode after warm-up (code: delta_decay)
    moving_alpha: float = option(0.5, gt=0, le=1)  # reward baseline's moving-average rate (code: moving_alpha)
    reward: Literal["acc", "acc_flops", "acc_params"] = "acc"  # acc: constrained mode (paper sec. 3.4, code
    # acc_reward); acc_flops / acc_params: -error * log(FLOPs / #params) (accuracy-guaranteed mode)
    recal_batches: int = option(50, ge=0)  # ours: training batches re-estimating BN per policy (the search
    # block's adaptive-BN evaluator; the paper scores without BN recalibration, after a least-squares refit)
    val_images: int = option(2000, ge=1)  # held-out training images scoring a policy (entry: 2k held out)
    record: str | None = None  # ours: JSON record of every episode (widths, cost, score); not resumable (the
    # agent's state is not saved)
    latency_table: str | None = None  # ours: the latency table's cache path for a latency= target


# ---------------------------------------------------------------------------------------------- the agent
class _Actor(nn.Module):
    def __init__(self, d: int, h: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1),
                                 nn.Sigmoid())

    def forward(self, s):
        return self.net(s)


class _Critic(nn.Module):
    def __init__(self, d: int, h: int):
        super().__init__()
        self.s, self.a = nn.Linear(d, h), nn.Linear(1, h)
        self.net = nn.Sequential(nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1))

    def forward(self, s, a):
        return self.net(self.s(s) + self.a(a))


class DDPG:
    """Deterministic policy gradient with target networks, a FIFO replay buffer and a moving-average reward
    baseline (Lillicrap et al. 2016, as AMC's ``lib/agent.py`` configures it)."""

    def __init__(self, state_dim: int, *, hidden: int, lr_actor: float, lr_critic: float, tau: float,
                 batch: int, memory: int, discount: float, moving_alpha: float, seed: int):
        g = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
            self.actor, self.critic = _Actor(state_dim, hidden), _Critic(state_dim, hidden)
            self.actor_t, self.critic_t = _Actor(state_dim, hidden), _Critic(state_dim, hidden)
        self.actor_t.load_state_dict(self.actor.state_dict())
        self.critic_t.load_state_dict(self.critic.state_dict())
        self.opt_a = torch.optim.Adam(self.actor.parameters(), lr=lr_actor)
        self.opt_c = torch.optim.Adam(self.critic.parameters(), lr=lr_critic)
        self.memory: deque = deque(maxlen=memory)
        self.tau, self.batch, self.discount, self.moving_alpha = tau, batch, discount, moving_alpha
        self.moving_average: float | None = None
        self.updates = 0

    @torch.no_grad()
    def act(self, state: np.ndarray) -> float:
        return float(self.actor(torch.as_tensor(state, dtype=torch.float32)[None])[0, 0])

    def observe(self, s, a: float, r: float, s2, done: bool) -> None:
        self.memory.append((np.asarray(s, np.float32), float(a), float(r), np.asarray(s2, np.float32), done))

    def update(self, rng: np.random.Generator) -> None:
        """One critic and one actor step on a minibatch drawn from the replay buffer, then soft target updates."""
        idx = rng.integers(0, len(self.memory), min(self.batch, len(self.memory)))
        s, a, r, s2, done = zip(*(self.memory[i] for i in idx))
        s, s2 = torch.as_tensor(np.stack(s)), torch.as_tensor(np.stack(s2))
        a = torch.tensor(a, dtype=torch.float32)[:, None]
        r = np.asarray(r, np.float64)
        mean = float(r.mean())  # rewards minus their moving average (code: normalise the reward)
        self.moving_average = mean if self.moving_average is None else \
            self.moving_average + self.moving_alpha * (mean - self.moving_average)
        r = torch.as_tensor(r - self.moving_average, dtype=torch.float32)[:, None]
        notdone = torch.tensor([0.0 if d else 1.0 for d in done])[:, None]
        with torch.no_grad():
            target = r + self.discount * notdone * self.critic_t(s2, self.actor_t(s2))
        loss_c = nn.functional.mse_loss(self.critic(s, a), target)
        self.opt_c.zero_grad()
        loss_c.backward()
        self.opt_c.step()
        loss_a = -self.critic(s, self.actor(s)).mean()
        self.opt_a.zero_grad()
        loss_a.backward()
        self.opt_a.step()
        with torch.no_grad():
            for net, tgt in ((self.actor, self.actor_t), (self.critic, self.critic_t)):
                for p, pt in zip(net.parameters(), tgt.parameters()):
                    pt.mul_(1 - self.tau).add_(p, alpha=self.tau)
        self.updates += 1


def truncated_normal(rng: np.random.Generator, mu: float, sigma: float, lo: float, hi: float) -> float:
    """A draw of N(mu, sigma) truncated to [lo, hi] (rejection; the mean clipped into the interval)."""
    mu = min(hi, max(lo, mu))
    for _ in range(1000):
        v = rng.normal(mu, sigma)
        if lo <= v <= hi:
            return float(v)
    return float(mu)


# ------------------------------------------------------------------------------------------- the layers
def _layer_info(subnets: Subnets) -> tuple[list, list]:
    """Per segment: (execution index, static features c_out, c_in, h, w, stride, k, MACs) of its first conv or
    linear producer, read with hooks on one forward of the example input."""
    model = subnets.model
    mods = dict(model.named_modules())
    seen: dict = {}
    hooks = []
    for name, m in mods.items():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            def hook(mod, args, _name=name):
                if _name not in seen and args and isinstance(args[0], torch.Tensor):
                    seen[_name] = (len(seen), tuple(args[0].shape))
            hooks.append(m.register_forward_pre_hook(hook))
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            call_model(model, subnets.example_inputs)
    finally:
        for h in hooks:
            h.remove()
        for m, f in flags:
            m.training = f
    macs = subnets.graph.macs_per_module()
    order, feats = [], []
    for i, (_, _, names) in enumerate(subnets.segments):
        prod = next((n for n in names if n in seen), None)
        if prod is None:
            order.append(10**9 + i)
            feats.append([subnets.space.widths[i], 0, 1, 1, 1, 1, 0])
            continue
        m, (idx, shape) = mods[prod], seen[prod]
        if isinstance(m, nn.Linear):
            f = [m.out_features, m.in_features, 1, 1, 0, 1]
        else:
            hw = list(shape[2:]) + [1, 1]
            f = [m.out_channels, m.in_channels, hw[0], hw[1], m.stride[0], m.kernel_size[0]]
        mac = sum(v for k, v in macs.items() if k == prod or k.startswith(prod + "."))
        order.append(idx)
        feats.append(f + [mac])
    return order, feats


def layer_embedding(order: list, static: list) -> np.ndarray:
    """The paper's state without its three dynamic entries: ``[t, n, c, h, w, stride, k, FLOPs[t]]`` per
    layer, ``t`` the position in the walk; each column scaled to [0, 1] over the layers (min-max, as the
    reference code does). Rows follow ``order`` (the walk)."""
    rows = np.array([[t] + list(static[i]) for t, i in enumerate(order)], float)
    lo, hi = rows.min(0), rows.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return (rows - lo) / span


def action_wall(space: SearchSpace, cost: Callable, limit: float, widths: list, i: int, floors: list,
                walk: list, step: int) -> int:
    """AMC's resource-constrained rule: the widest width of group ``i`` (the walk's ``step``-th layer) such
    that, with the layers already decided at ``widths`` and every later layer of the walk at its floor, the
    cost is within ``limit``."""
    trial = list(widths)
    for j in walk[step + 1:]:
        trial[j] = floors[j]
    best = widest_within(space, cost, limit, trial, i)
    if best is None:
        raise ConfigError(f"the budget {limit} cannot be met at layer {space.names[i]!r} even with it and every "
                          f"later layer at the lower bound; raise the target or lower options.lbound")
    return best


# --------------------------------------------------------------------------------------------- the search
def amc_search(subnets: Subnets, cost: Callable, limit: float, evaluate: Callable, cfg: AMCConfig, *,
               seed: int = 0, macs_cost: Callable | None = None, params_cost: Callable | None = None,
               on_episode: Callable | None = None) -> tuple[SearchRecord, dict]:
    """Run AMC's episodes over ``subnets``' space under ``cost(widths) <= limit`` (MACs, params or latency);
    ``evaluate(widths) -> accuracy in [0, 1]``. Returns the record (one trial per episode: widths, cost, the
    accuracy as score, the reward and the noise in ``info``) and the agent's figures."""
    if cfg.rbound < cfg.lbound:
        raise ConfigError(f"method 'amc': rbound={cfg.rbound} is below lbound={cfg.lbound}; need lbound <= rbound")
    space = subnets.space
    n = len(space)
    order, static = _layer_info(subnets)
    walk = sorted(range(n), key=lambda i: order[i])  # layers in the order the forward pass reaches them
    emb = layer_embedding(walk, static)
    floors = [space.snap(i, cfg.lbound * space.widths[i]) for i in range(n)]
    if cost(tuple(floors)) > limit + 1e-12:
        raise ConfigError(f"the budget {limit} cannot be reached: every layer at lbound={cfg.lbound} still costs "
                          f"{cost(tuple(floors)):.4f}; raise the target or lower options.lbound")
    full = space.full()
    agent = DDPG(emb.shape[1] + 3, hidden=cfg.hidden, lr_actor=cfg.lr_actor, lr_critic=cfg.lr_critic, tau=cfg.tau,
                 batch=cfg.batch, memory=cfg.memory_per_layer * n, discount=cfg.discount,
                 moving_alpha=cfg.moving_alpha, seed=seed)
    pending: list = []  # the last episode's transitions, waiting for its score
    noise = [cfg.init_noise]

    def reward_of(score: float, widths) -> float:
        if cfg.reward == "acc":
            return score
        f = macs_cost if cfg.reward == "acc_flops" else params_cost
        resource = f(widths) if f is not None else cost(widths)
        return -(1.0 - score) * math.log(max(resource, 1e-12))

    def learn(rng, record: SearchRecord) -> None:
        if not pending:
            return
        last = record.trials[-1]
        r = reward_of(last.score, last.widths)
        last.info["reward"] = r
        for s, a, s2, done in pending:
            agent.observe(s, a, r, s2, done)
        pending.clear()
        if len(record.trials) > cfg.warmup:
            for _ in range(n):
                agent.update(rng)

    def state(step: int, widths: list, prev: float) -> np.ndarray:
        """The layer's static row, then the three dynamic entries: the cost already cut (layers decided, the
        rest at full width), the cost the later layers can still cut (down to their floors), the last action."""
        partial = list(widths)
        for j in walk[step:]:
            partial[j] = full[j]
        reduced = 1.0 - cost(tuple(partial))
        later = list(partial)
        for j in walk[step + 1:]:
            later[j] = floors[j]
        rest = cost(tuple(partial)) - cost(tuple(later))
        return np.concatenate([emb[step], [reduced, rest, prev]]).astype(np.float32)

    def propose(rng: np.random.Generator, record: SearchRecord):
        learn(rng, record)
        episode = len(record.trials)
        exploring = episode < cfg.warmup
        sigma = cfg.init_noise * cfg.noise_decay ** max(0, episode - cfg.warmup)
        noise[0] = sigma
        widths, prev, clipped = list(full), 1.0, 0
        states = []
        for step, i in enumerate(walk):
            s = state(step, widths, prev)
            a = rng.uniform(cfg.lbound, cfg.rbound) if exploring else \
                truncated_normal(rng, agent.act(s), sigma, cfg.lbound, cfg.rbound)
            a = float(min(cfg.rbound, max(cfg.lbound, a)))
            w = space.snap(i, a * space.widths[i])
            wall = action_wall(space, cost, limit, widths, i, floors, walk, step)
            if w > wall:
                w, clipped = wall, clipped + 1
            widths[i] = w
            prev = w / space.widths[i]
            states.append((s, a))
        for step, (s, a) in enumerate(states):
            done = step == n - 1
            s2 = states[step + 1][0] if not done else s
            pending.append((s, a, s2, done))
        return tuple(widths), {"episode": episode, "random": exploring, "noise": sigma, "clipped": clipped}

    budget = SearchBudget(evaluations=cfg.episodes)
    record = run_search(space, propose, evaluate, cost, limit, budget, seed=seed, path=cfg.record,
                        on_trial=on_episode)
    learn(np.random.default_rng([seed, len(record.trials)]), record)
    return record, {"updates": agent.updates, "final_noise": noise[0], "memory": len(agent.memory)}


# --------------------------------------------------------------------------------------------- the method
def _engaged(t: dict) -> bool:
    return t["updates"] >= 1


@register_method("amc", config=AMCConfig, kind="structured", needs=("train", "val"),
                 status="partial",
                 left_out="the least-squares refit of each pruned layer before scoring (policies are scored by "
                          "adaptive-BN accuracy instead, the search block's evaluator), channel choice by the "
                          "next layer's input-weight magnitude (here the L1 criterion of the producing filters), "
                          "the on-device latency reward and fine-grained (weight-level) AMC",
                 smoke={"episodes": 4, "warmup": 2, "round_to": 1, "recal_batches": 2, "val_images": 64,
                        "batch": 8},
                 telemetry=Telemetry(
                     keys=("episodes", "warmup", "updates", "first_reward", "best_reward", "last_reward",
                           "final_noise", "best_cost", "max_cost", "clipped", "search_seconds"),
                     engaged=_engaged,
                     what="the DDPG agent learning from episodes after the random warm-up",
                     knob="raise options.episodes above options.warmup (the agent learns only after the warm-up "
                          "episodes)"))
def run(ctx: RunContext, cfg: AMCConfig) -> MethodResult:
    model = ctx.model
    subnets = Subnets(model, ctx.example_inputs, criterion="l1", ignore=ctx.ignore, round_to=cfg.round_to)
    _, limit, cost, _ = target_cost(subnets, ctx.target, cfg.latency_table)
    val = first_examples(ctx.val_data, cfg.val_images)
    recal = first_batches(ctx.train_data, cfg.recal_batches) if cfg.recal_batches else []
    evaluator = SubnetEvaluator(recal, val, device=ctx.device, adaptive_bn=cfg.recal_batches > 0)

    def score(widths) -> float:
        with subnets.masked(widths) as view:
            return evaluator(view)

    record, agent = amc_search(subnets, cost, limit, score, cfg, seed=ctx.seed,
                               macs_cost=lambda w: subnets.cost(w, "macs") * subnets.graph.macs(),
                               params_cost=lambda w: subnets.cost(w, "params") * subnets.graph.params())
    return _finish(ctx, cfg, subnets, record, agent)


def _finish(ctx: RunContext, cfg: AMCConfig, subnets: Subnets, record: SearchRecord, agent: dict) -> MethodResult:
    trials = record.trials
    rewards = [t.info.get("reward", float("nan")) for t in trials]
    best_i = int(np.nanargmax(rewards))
    best = trials[best_i]
    first = rewards[:max(1, min(cfg.warmup, len(rewards)))]
    report = prune_(ctx.model, subnets.plan(best.widths))
    if cfg.recal_batches:  # hand on the sub-net as it was scored: BatchNorm statistics re-estimated
        recalibrate_bn(ctx.model, first_batches(ctx.train_data, cfg.recal_batches), ctx.device)
    space = subnets.space
    telemetry = {"episodes": len(trials), "warmup": min(cfg.warmup, len(trials)), "updates": agent["updates"],
                 "first_reward": float(np.nanmean(first)), "best_reward": float(rewards[best_i]),
                 "last_reward": float(np.nanmean(rewards[-10:])), "final_noise": agent["final_noise"],
                 "best_cost": best.cost, "max_cost": max(t.cost for t in trials),
                 "clipped": sum(t.info.get("clipped", 0) for t in trials), "search_seconds": record.seconds}
    info = {"widths": dict(zip(space.names, best.widths)), "dense_widths": dict(zip(space.names, space.widths)),
            "rewards": rewards, "scores": [t.score for t in trials], "costs": [t.cost for t in trials],
            "best_episode": best.index, "exact_masking": subnets.exact, "engine_report": report.to_dict()}
    log.info("amc: %d episodes, best reward %.4f (warm-up mean %.4f) at %.4f", len(trials), rewards[best_i],
             telemetry["first_reward"], best.cost)
    return MethodResult(model=ctx.model, info=info, telemetry=telemetry)
