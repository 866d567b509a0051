"""AMC (He et al., ECCV 2018): a DDPG agent choosing each layer's kept fraction under the action wall."""
import math

import numpy as np
import pytest
import torch

from prunekit.allocate.search import SearchSpace, widest_within
from prunekit.api import Subnets
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.measure.latency_table import LatencyModel, LatencyTable
from prunekit.methods import get_method, load_all
from prunekit.methods.amc import AMCConfig, DDPG, action_wall, amc_search, layer_embedding, truncated_normal

from method_setups import search_ctx, tiny_convnet, trained_tiny_convnet

load_all()

SMALL = {"round_to": 1, "recal_batches": 3, "batch": 16}  # the tiny net's layers have 4 and 6 channels


def _ctx(model, target="macs=0.5", **options):
    return search_ctx(model, target, **{**SMALL, **options})


def test_the_action_wall_leaves_room_for_the_later_layers_as_computed_by_hand():
    s = SearchSpace.of(["a", "b", "c"], [10, 10, 10])
    cost = lambda w: sum(w) / 30  # noqa: E731
    floors = [2, 2, 2]  # lbound 0.2
    walk = [0, 1, 2]
    # half the budget = 15 channels: layer a may keep 15 - 2 - 2 = 11 -> all 10; then b: 15 - 10 - 2 = 3; c: 2
    assert action_wall(s, cost, 0.5, [10, 10, 10], 0, floors, walk, 0) == 10
    assert action_wall(s, cost, 0.5, [10, 10, 10], 1, floors, walk, 1) == 3
    assert action_wall(s, cost, 0.5, [10, 3, 10], 2, floors, walk, 2) == 2
    # walked in another order (c first, kept whole) the wall binds layer a: 15 - 10 - 2 = 3
    assert action_wall(s, cost, 0.5, [10, 10, 10], 0, floors, [2, 0, 1], 1) == 3
    assert widest_within(s, cost, 0.5, (2, 2, 2), 1) == 10 and widest_within(s, cost, 0.1, (2, 2, 2), 0) is None
    with pytest.raises(ConfigError, match="lbound"):
        action_wall(s, cost, 0.1, [10, 10, 10], 0, floors, walk, 0)


def test_every_policy_played_meets_the_budget_and_the_wall_clipped_some():
    m = trained_tiny_convnet()
    res = get_method("amc").run(_ctx(m, episodes=12, warmup=4))
    t = res.telemetry
    assert t["episodes"] == 12 and t["warmup"] == 4 and t["updates"] == 8 * 2  # one update per layer and episode
    assert max(res.info["costs"]) <= 0.5 + 1e-12 and t["max_cost"] <= 0.5 + 1e-12
    assert t["clipped"] > 0  # random actions above the budget were clipped, not refused
    assert res.engaged is True
    assert t["final_noise"] == pytest.approx(0.5 * 0.95 ** (11 - 4))
    assert t["best_reward"] == max(res.info["rewards"]) >= t["first_reward"]
    assert [m[0].out_channels, m[3].out_channels] == list(res.info["widths"].values())


def test_without_episodes_after_the_warm_up_the_agent_never_learns_and_it_warns():
    with pytest.warns(MechanismWarning, match="options.episodes"):
        res = get_method("amc").run(_ctx(tiny_convnet(), episodes=3, warmup=100))
    assert res.engaged is False and res.telemetry["updates"] == 0


def test_the_agent_learns_to_keep_the_layer_that_pays():
    """A toy reward (the kept fraction of the second layer; the MACs budget forces a trade): after 10 random
    episodes the agent's episodes earn more than the random ones did."""
    m = tiny_convnet()
    s = Subnets(m, torch.randn(2, 1, 6, 6))
    cfg = AMCConfig(episodes=60, warmup=10, round_to=1, batch=32)
    rec, agent = amc_search(s, lambda w: s.cost(w, "macs"), 0.5, lambda w: w[1] / 6, cfg, seed=0)
    r = [t.info["reward"] for t in rec.trials]
    assert agent["updates"] == 50 * 2 and np.mean(r[-20:]) > np.mean(r[:10]) + 0.1, (np.mean(r[:10]), r[-20:])


def test_the_accuracy_flops_reward_is_minus_error_times_log_flops():
    m = trained_tiny_convnet()
    res = get_method("amc").run(_ctx(m, episodes=3, warmup=1, reward="acc_flops"))
    s = Subnets(trained_tiny_convnet(), torch.randn(2, 1, 6, 6))
    dense = s.graph.macs()
    for score, cost, reward in zip(res.info["scores"], res.info["costs"], res.info["rewards"]):
        assert reward == pytest.approx(-(1 - score) * math.log(cost * dense))


def test_a_latency_budget_is_met_by_every_policy():
    m = tiny_convnet()
    x = torch.randn(2, 1, 6, 6)
    table = LatencyTable.build(m, x, warmup=0, runs=2, grid=(0.5, 1.0))
    for e in table.entries.values():  # a deterministic table: in x out / 100 ms
        e["ms"] = [[a * b / 100 for b in e["out"]] for a in e["in"]]
    table.dense_ms, table._env = table.layers_ms() + 0.05, {}
    table.calibration = {"widths": [], "measured_ms": 0.0, "residual": 0.05, "act": 0.5}  # a constant residual
    s = Subnets(m, x)
    lat = LatencyModel(s, table)
    rec, _ = amc_search(s, lat.cost, 0.7, lambda w: float(sum(w)), AMCConfig(episodes=6, warmup=2, round_to=1), seed=1)
    assert all(t.cost <= 0.7 + 1e-12 for t in rec.trials) and max(t.cost for t in rec.trials) > 0.5


def test_the_layer_embedding_scales_each_feature_over_the_layers():
    e = layer_embedding([1, 0], [[16, 3, 32, 32, 1, 3, 100], [32, 16, 16, 16, 2, 3, 50]])
    assert e.shape == (2, 8)
    np.testing.assert_allclose(e[:, 0], [0, 1])  # t: the position in the walk
    np.testing.assert_allclose(e[0], [0, 1, 1, 0, 0, 1, 0, 0])  # the walk starts at layer 1
    rng = np.random.default_rng(0)
    draws = [truncated_normal(rng, 0.9, 0.5, 0.2, 1.0) for _ in range(200)]
    assert min(draws) >= 0.2 and max(draws) <= 1.0


def test_ddpg_soft_updates_move_the_targets_by_tau():
    agent = DDPG(4, hidden=8, lr_actor=1e-2, lr_critic=1e-2, tau=0.5, batch=4, memory=10, discount=1.0,
                 moving_alpha=0.5, seed=0)
    before = [p.clone() for p in agent.actor_t.parameters()]
    for i in range(4):
        agent.observe(np.ones(4) * i, 0.5, float(i), np.ones(4), True)
    agent.update(np.random.default_rng(0))
    after = list(agent.actor_t.parameters())
    for b, a, p in zip(before, after, agent.actor.parameters()):
        torch.testing.assert_close(a, 0.5 * b + 0.5 * p.detach())
    assert len(agent.memory) == 4 and agent.updates == 1


def test_bad_input_leaves_the_model_as_it_was():
    m = tiny_convnet()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ConfigError, match="rbound"):
        get_method("amc").run(_ctx(m, episodes=2, lbound=0.8, rbound=0.5))
    with pytest.raises(ConfigError, match="lbound"):  # every layer at 0.9 keeps more than a tenth of the MACs
        get_method("amc").run(_ctx(m, target="macs=0.2", episodes=2, lbound=0.9))
    with pytest.raises(ConfigError, match="episodes"):
        get_method("amc").run(_ctx(m, episodes=0))
    with pytest.raises(ConfigError, match="reward"):
        get_method("amc").run(_ctx(m, episodes=2, reward="accuracy"))
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())
