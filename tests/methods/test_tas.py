"""TAS (Dong & Yang, NeurIPS 2019): Gumbel two-width sampling with channel-wise interpolation, the FLOPs loss of
the paper's form, the argmax shape cut, re-initialised and distilled from the unpruned net."""
import pytest
import torch

from prunekit.errors import ConfigError, MechanismWarning
from prunekit.graph import build_graph
from prunekit.methods import get_method, load_all
from prunekit.methods.tas import _top_up, tas_cost_loss, tas_mix
from prunekit.train.relaxed_widths import RelaxedWidths

from method_setups import conv_batches, conv_ctx, tiny_convnet

load_all()


def test_the_mix_stretches_the_narrower_prefix_by_cwi_weights_both_and_zero_pads_unread_channels():
    out = torch.tensor([1.0, 3.0, 5.0, 7.0, 9.0, 11.0]).view(1, 6, 1, 1)
    y = tas_mix(out, [2, 4], torch.tensor([0.25, 0.75])).flatten()
    # width 2: [1, 3] stretched to 4 channels -> [1, 1, 3, 3]; width 4: [1, 3, 5, 7]; channels 4-5 unread -> 0
    assert y.tolist() == pytest.approx([1.0, 0.25 + 0.75 * 3, 0.75 + 0.75 * 5, 0.75 + 0.75 * 7, 0.0, 0.0])
    assert torch.equal(tas_mix(out, [6, 6], torch.tensor([0.5, 0.5])), out)


def test_the_flops_loss_pushes_down_above_the_target_up_below_the_window_and_is_off_inside():
    e = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(tas_cost_loss(e, 0.55, 0.5, 0.05), e)
    assert float(g) == pytest.approx(1 / 0.6)  # d log E / dE > 0: descent lowers E[F]
    (g,) = torch.autograd.grad(tas_cost_loss(e, 0.40, 0.5, 0.05), e)
    assert float(g) == pytest.approx(-1 / 0.6)  # below 0.45: descent raises E[F]
    inside = tas_cost_loss(e, 0.47, 0.5, 0.05)
    assert float(inside) == 0.0 and not inside.requires_grad


def test_the_top_up_lowers_the_group_whose_narrower_candidate_is_most_likely_until_the_budget_holds():
    m = tiny_convnet()
    g = build_graph(m, torch.zeros(2, 1, 6, 6))
    rw = RelaxedWidths(g, {grp.id: grp.width for grp in g.groups}, ratios=(0.5, 1.0))
    a, b = rw.dists
    with torch.no_grad():
        rw.dists[a].logits.copy_(torch.tensor([-5.0, 0.0]))  # group a: width 2 unlikely
        rw.dists[b].logits.copy_(torch.tensor([-1.0, 0.0]))  # group b: width 3 likelier
    full = {gid: d.width for gid, d in rw.dists.items()}
    budget = rw.exact_cost({a: 4, b: 3}) + 0.5
    widths, steps = _top_up(rw, full, budget)
    assert widths == {a: 4, b: 3} and steps == 1


def _run(**kw):
    m = tiny_convnet()
    data = conv_batches(6, labels="tercile")
    return get_method("tas").run(conv_ctx(m, data, **kw)), m


def test_the_search_moves_the_distributions_and_the_argmax_shape_is_cut_to_the_target_and_distilled():
    res, m = _run(prune_epochs=2, options={"arch_lr": 0.05, "kd_epochs": 1})
    t = res.telemetry
    assert res.engaged is True and t["arch_steps"] == 2 * 3 and t["distribution_shift"] >= 1e-3
    assert t["entropy_start"] == pytest.approx((torch.log(torch.tensor(4.0)) + torch.log(torch.tensor(6.0))).item() / 2)
    assert res.info["kept_macs_fraction"] <= 0.5 and res.info["kd_steps"] == 6
    assert sorted(res.info["widths"].values()) == sorted([m[0].out_channels, m[3].out_channels])
    assert all(w in (1, 2, 3, 4, 5, 6) for w in res.info["widths"].values())
    assert not any(mod._forward_hooks for mod in m.modules())


def test_without_distribution_steps_worth_the_name_the_run_warns_naming_arch_lr():
    with pytest.warns(MechanismWarning, match="arch_lr"):
        res, _ = _run(options={"arch_lr": 1e-9, "kd_epochs": 0})
    assert res.engaged is False and res.telemetry["distribution_shift"] < 1e-3


def test_bad_input_is_refused_by_name_and_leaves_the_model_as_it_was():
    m = tiny_convnet()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    data = conv_batches(2)
    with pytest.raises(ConfigError, match="macs"):
        get_method("tas").run(conv_ctx(m, data, target="params=0.5"))
    with pytest.raises(ConfigError, match="tau_min"):
        get_method("tas").run(conv_ctx(m, data, options={"tau_min": 9.0}))
    with pytest.raises(ConfigError, match="ratios"):
        get_method("tas").run(conv_ctx(m, data, options={"ratios": (0.9, 1.0)}))
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())
