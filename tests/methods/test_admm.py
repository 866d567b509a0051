"""admm (Zhang et al., ECCV 2018): K x (W-step with the penalty, Z = proj(W + U), U += W - Z), hard prune, masked
retraining. The defining step (projection and dual update) is checked by hand on a 3x3 example in
tests/train/test_constrained.py; here: the method's schedule, ratios, 2:4, telemetry, bad input and the
entry's small-scale check."""
import copy

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError, MechanismWarning
from prunekit.masks import get_masks, get_pattern
from prunekit.methods import RunContext, get_method, load_all
from prunekit.train import TrainConfig

load_all()
# a budget on which the W-steps can move the weights: 4 W-steps of 20 steps, rho = 0.1, Adam 1e-2
ENGAGING = {"iterations": 4, "rho": 0.1, "lr": 1e-2}


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20 * 8, 10, generator=g)
    return [(x[i:i + 8], (x[i:i + 8, 0] > 0).long()) for i in range(0, len(x), 8)]


def ctx(model=None, target="sparsity=0.8", epochs=4, **options):
    torch.manual_seed(0)
    model = model or nn.Sequential(nn.Linear(10, 30), nn.ReLU(), nn.Linear(30, 2))
    return RunContext(model=model, example_inputs=None, target=target, train_data=data(), prune_epochs=epochs,
                      train_config=TrainConfig(lr=0.05, progress=False), options=options)


def test_k_admm_iterations_share_the_budget_then_every_layer_is_hard_pruned_to_the_target():
    c = ctx(**ENGAGING)
    res = get_method("admm").run(c)
    hist = res.info["history"]
    assert [h["step"] for h in hist] == [0, 20, 40, 60, 80]  # setup + K = 4 updates, 80 steps / 4
    assert res.engaged is True and res.telemetry["updates"] == 4
    assert res.telemetry["gap_last"] < 0.7 * res.telemetry["gap_first"]  # measured 2.35 -> 1.38
    assert res.info["epochs_trained"] == 4
    masks = get_masks(c.model)
    assert set(masks) == {"0.weight", "2.weight"}
    for fqn, m in masks.items():
        assert 1 - m.float().mean().item() == pytest.approx(0.8, abs=1e-6)
        w = dict(c.model.named_parameters())[fqn]
        assert torch.equal(w[~m], torch.zeros_like(w[~m]))
    assert res.info["sparsity"] == pytest.approx(0.8, abs=1e-6)


def test_without_the_penalty_admm_did_nothing_and_warns_with_the_knob():
    c = ctx(**{**ENGAGING, "rho": 0.0})
    with pytest.warns(MechanismWarning, match="raise options.rho"):
        res = get_method("admm").run(c)
    assert res.engaged is False and res.telemetry["rho_final"] == 0.0


def test_paper_defaults_on_a_tiny_budget_do_not_close_the_gap_and_say_so():
    # K = 30 W-steps of 2-3 steps each cannot solve the W-subproblem: the duals wind up and ||W - Z|| grows
    c = ctx()
    with pytest.warns(MechanismWarning, match="options.iterations or prune_epochs"):
        res = get_method("admm").run(c)
    assert res.telemetry["updates"] == 30 and res.telemetry["gap_last"] > res.telemetry["gap_first"]


def test_hand_set_per_layer_ratios_are_met():
    c = ctx(**ENGAGING, per_layer={"0": 0.5, "2": 0.9})
    res = get_method("admm").run(c)
    assert res.info["layer_sparsity"] == pytest.approx({"0.weight": 0.5, "2.weight": 0.9}, abs=1e-6)


def test_rho_schedule_multiplies_per_iteration_up_to_its_cap():
    c = ctx(**ENGAGING, rho_factor=2.0, rho_max=0.3)
    res = get_method("admm").run(c)
    assert [h["rho"] for h in res.info["history"]] == pytest.approx([0.1, 0.1, 0.2, 0.3, 0.3])
    assert res.telemetry["rho_final"] == pytest.approx(0.3)


def test_2_4_through_admm():
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(80, 12, generator=g)
    c = RunContext(model=model, example_inputs=None, target="sparsity=0.5", prune_epochs=2,
                   train_data=[(x[i:i + 8], (x[i:i + 8, 0] > 0).long()) for i in range(0, 80, 8)],
                   train_config=TrainConfig(lr=0.05, progress=False), options={**ENGAGING, "pattern": "2:4"})
    res = get_method("admm").run(c)
    nm = get_pattern("2:4")
    for fqn, m in get_masks(model).items():
        assert nm.check(m.reshape(m.shape[0], -1)) and m.float().mean().item() == 0.5
    assert res.telemetry["updates"] == 4


def test_bad_input_is_refused_and_the_model_is_unchanged():
    c = ctx(target="sparsity=0.9", pattern="2:4")
    before = copy.deepcopy(c.model.state_dict())
    with pytest.raises(ConfigError, match=r"options.pattern='2:4': that pattern's sparsity is 0.5; use target='sparsity=0.5'"):
        get_method("admm").run(c)
    assert all(torch.equal(before[k], v) for k, v in c.model.state_dict().items()) and not get_masks(c.model)
    with pytest.raises(ConfigError, match=r"options\['rho'\]=-1.0 must be >= 0"):
        get_method("admm").run(ctx(rho=-1.0))
    with pytest.raises(ConfigError, match=r"options\['iterations'\]=0 must be >= 1"):
        get_method("admm").run(ctx(iterations=0))
    with pytest.raises(ConfigError, match="per_layer names"):
        get_method("admm").run(ctx(per_layer={"fc9": 0.5}))
    no_data = ctx()
    no_data.train_data = None
    with pytest.raises(ConfigError, match="needs train data"):
        get_method("admm").run(no_data)
    with pytest.raises(ConfigError, match="target='macs=0.5'"):
        get_method("admm").run(ctx(target="macs=0.5"))
