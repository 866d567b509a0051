"""DSA (Ning et al., ECCV 2020): keep ratios learned through the differentiable pruning process (beta1 solved so
that mean(p) = alpha, implicit gradient), ADMM-style budget steps, the final ratios cut by L1 importance."""
import pytest
import torch

from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods import get_method, load_all
from prunekit.methods.dsa import _keep_counts, keep_probabilities, project_to_budget, solve_log_beta1

from method_setups import conv_batches, conv_ctx, tiny_convnet

load_all()


@pytest.mark.parametrize("alpha", [0.1, 0.3, 0.5, 0.8, 0.97])
@pytest.mark.parametrize("beta2", [0.5, 1.0, 4.0])
def test_the_solved_beta1_gives_mean_p_equal_to_alpha_and_p_is_monotone_in_the_importance(alpha, beta2):
    b = torch.rand(32, generator=torch.Generator().manual_seed(0)) * 3 + 0.01
    p = keep_probabilities(b, torch.tensor(alpha), beta2)
    assert float(p.mean()) == pytest.approx(alpha, abs=0.01)
    order = torch.argsort(b)
    assert bool((p[order][1:] >= p[order][:-1]).all())
    # p = 1 / (1 + (beta1 / b)^beta2) with the solved beta1, by hand
    beta1 = torch.exp(torch.tensor(solve_log_beta1(torch.log(b.double()), alpha, beta2)))
    assert torch.allclose(p.double(), 1 / (1 + (beta1 / b.double()) ** beta2), atol=1e-6)


def test_the_implicit_gradient_in_alpha_matches_finite_differences_of_the_resolved_process():
    b = torch.tensor([0.2, 0.5, 1.0, 1.5, 3.0], dtype=torch.float64)
    a = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0, 1.0], dtype=torch.float64)
    (g,) = torch.autograd.grad((keep_probabilities(b, a, 2.0) * w).sum(), a)
    h = 1e-5
    up = (keep_probabilities(b, torch.tensor(0.4 + h, dtype=torch.float64), 2.0) * w).sum()
    down = (keep_probabilities(b, torch.tensor(0.4 - h, dtype=torch.float64), 2.0) * w).sum()
    assert float(g) == pytest.approx(float(up - down) / (2 * h), rel=1e-4)


def test_the_budget_projection_leaves_feasible_ratios_and_moves_infeasible_ones_along_the_cost_gradient():
    weights = torch.tensor([4.0, 1.0], dtype=torch.float64)

    def cost(r):  # a hand cost: group 0 is four times as expensive per unit of ratio
        return (weights * r).sum() / weights.sum()

    v = torch.tensor([0.3, 0.3], dtype=torch.float64)
    assert torch.equal(project_to_budget(v, cost, 0.5, 0.05), v)
    z = project_to_budget(torch.tensor([1.0, 1.0]), cost, 0.5, 0.05)
    assert float(cost(z)) == pytest.approx(0.5, abs=1e-9)
    assert float(1 - z[0]) == pytest.approx(4 * float(1 - z[1]), rel=1e-6)  # step = mu * grad F (4:1)


def test_keep_counts_floor_the_ratios_then_add_channels_back_while_the_budget_holds():
    class G:
        def __init__(self, w):
            self.width = w

    groups = [G(10), G(10)]

    def cost(frac):
        return frac.mean()

    # exact counts 4.6 and 5.3 -> floor 4 and 5 (cost 0.45); +1 on the larger remainder (0.6) -> 0.5 <= 0.5
    assert _keep_counts(torch.tensor([0.46, 0.53]), groups, cost, 0.5) == [5, 5]
    assert _keep_counts(torch.tensor([0.46, 0.53]), groups, cost, 0.47) == [4, 5]


def _run(**kw):
    m = tiny_convnet()
    data = conv_batches(6, labels="tercile")
    return get_method("dsa").run(conv_ctx(m, data, **kw)), m


def test_the_ratios_learn_the_final_ones_meet_the_budget_in_expectation_and_the_cut_meets_it():
    res, m = _run(prune_epochs=2)
    t = res.telemetry
    assert res.engaged is True and t["alpha_steps"] == 6 and t["alpha_moved"] >= 0.01
    assert t["expected_macs_fraction"] == pytest.approx(0.5, abs=0.03 * 0.5)
    assert res.info["kept_macs_fraction"] <= 0.5
    assert [m[0].out_channels, m[3].out_channels] == list(res.info["widths"].values())
    assert not any(mod._forward_hooks for mod in m.modules())


def test_without_ratio_steps_worth_the_name_the_run_warns_naming_alpha_lr():
    with pytest.warns(MechanismWarning, match="alpha_lr"):
        res, _ = _run(options={"alpha_lr": 1e-9})
    assert res.engaged is False and res.telemetry["alpha_moved"] < 0.01


def test_bad_input_is_refused_by_name_and_leaves_the_model_as_it_was():
    m = tiny_convnet()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    data = conv_batches(2)
    with pytest.raises(ConfigError, match="macs"):
        get_method("dsa").run(conv_ctx(m, data, target="params=0.5"))
    with pytest.raises(ConfigError, match="min_ratio"):
        get_method("dsa").run(conv_ctx(m, data, options={"min_ratio": 0.9}))
    with pytest.raises(ConfigError, match="importance"):
        get_method("dsa").run(conv_ctx(m, data, options={"importance": "l3"}))
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())
