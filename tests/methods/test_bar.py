"""BAR (Lemaire et al., CVPR 2019): Hard-Concrete gates, a barrier on the gated MACs, distillation."""
import pytest
import torch

from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods import get_method, load_all
from prunekit.methods._soft_masks import HardConcrete, logistic_noise

from method_setups import conv_batches, conv_ctx, tiny_convnet

load_all()


def test_hard_concrete_probability_of_an_open_gate_matches_a_monte_carlo_estimate_and_closed_gates_are_exact_zeros():
    gate = HardConcrete(torch.tensor([-1.0, 0.0, 2.0]))
    g = torch.Generator().manual_seed(0)
    samples = gate.sample(logistic_noise((200_000, 3), g))
    assert (samples != 0).float().mean(0).tolist() == pytest.approx(gate.prob_nonzero().tolist(), abs=4e-3)
    assert (samples == 0).any() and (samples == 1).any()  # the stretch and clip give exact 0 and 1
    assert HardConcrete(torch.tensor([-3.0])).deterministic().item() == 0.0


def _run(**kw):
    m = tiny_convnet()
    data = conv_batches(6, labels="tercile")
    return get_method("bar").run(conv_ctx(m, data, **kw)), m


def test_the_barrier_closes_gates_and_the_gated_net_stays_under_the_budget_after_it_is_reached():
    res, _ = _run(prune_epochs=3, options={"gate_lr": 0.5})
    t = res.telemetry
    assert res.engaged is True and t["closed_gates"] > 0
    assert len(t["barrier"]) == len(t["budget_margin"]) == 3 and t["budget_margin"][-1] >= 0
    assert t["over_budget_steps"] == 0  # expected MACs <= the budget at every step after the ramp
    assert res.info["gated_macs_fraction"] <= 0.5 and res.info["kept_macs_fraction"] <= 0.5


def test_the_closed_gates_are_what_the_cut_removes_and_folding_keeps_the_gated_function():
    res, m = _run(prune_epochs=3, options={"gate_lr": 0.5})
    assert all(res.info["widths"][k] <= max(n, 1) for k, n in res.info["open_gates"].items())  # closed: cut
    assert not any(mod._forward_hooks for mod in m.modules())  # the gates are folded, no hook left


def test_too_little_training_closes_no_gate_and_warns():
    with pytest.warns(MechanismWarning, match="prune_epochs"):
        res, _ = _run(options={"gate_lr": 1e-6})
    assert res.engaged is False and res.telemetry["closed_gates"] == 0


def test_without_distillation_no_teacher_is_used_and_the_run_still_meets_the_target():
    res, _ = _run(prune_epochs=3, options={"gate_lr": 0.5, "kd_alpha": 0.0})
    assert res.info["kept_macs_fraction"] <= 0.5


def test_bad_input_leaves_the_model_as_it_was():
    m = tiny_convnet()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    data = conv_batches(2)
    with pytest.raises(ConfigError, match="macs"):
        get_method("bar").run(conv_ctx(m, data, target="params=0.5"))
    with pytest.raises(ConfigError, match="kd_alpha"):
        get_method("bar").run(conv_ctx(m, data, options={"kd_alpha": 2.0}))
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())
