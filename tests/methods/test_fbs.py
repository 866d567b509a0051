import copy

import pytest
import torch
from dynamic_setups import chain_net, run
from types import SimpleNamespace

from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods.fbs import SaliencyL1
from prunekit.surgery import dynamic as D


def _unit():
    net = chain_net()
    D.gate_convs_(net, [("3", "4")], D.FBS, lambda f, c: [2])
    return net, net[3]


def test_saliency_is_relu_of_a_linear_map_of_mean_input_magnitudes_and_wta_keeps_the_k_largest():
    _, unit = _unit()
    sel = unit.selector
    with torch.no_grad():
        sel.fc.weight.zero_()
        sel.fc.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0]))
        sel.fc.weight[:4, :] = torch.eye(4)  # s_c = mean|x_c| for c < 4
        sel.fc.weight[4, 0] = 1.0
    x = torch.zeros(1, 4, 2, 2)
    x[0, 0] = torch.tensor([[1.0, -1.0], [1.0, -1.0]])  # mean |x| = 1
    x[0, 1] = 0.5
    x[0, 2] = -3.0
    keep, s = sel(x)
    # by hand: s = relu([1, .5, 3, 0, 1 - 1, 0, 0, 0]); the two largest are channels 2 and 0
    torch.testing.assert_close(s, torch.tensor([[1.0, 0.5, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0]]))
    assert keep.tolist() == [[True, False, True, False, False, False, False, False]]


def test_kept_channels_are_boosted_by_their_saliency_and_the_rest_are_suppressed():
    net, unit = _unit()
    dense = chain_net()
    net.eval(), dense.eval()
    x = torch.randn(3, 1, 6, 6)
    with torch.no_grad():
        h = dense[2](dense[1](dense[0](x)))
        ref = dense[4](dense[3](h))  # BN(conv(x)) of the ungated model
        y = unit(h)
        keep, s = unit.selector(h)
    torch.testing.assert_close(y, ref * s[:, :, None, None] * keep[:, :, None, None])
    assert (keep.sum(1) == 2).all() and (y[~keep] == 0).all()


def test_inner_layer_reads_only_the_channels_the_layer_before_kept():
    net = chain_net()
    D.gate_convs_(net, [("3", "4"), ("6", "7")], D.FBS, lambda f, c: [3])
    net.eval()
    x = torch.randn(4, 1, 6, 6)
    macs = D.executed_macs(net, x)
    first, second = net[3], net[6]
    with torch.no_grad():
        h = net[5](net[4](first(net[2](net[1](net[0](x))))))  # the second unit's input
    read = (h.abs().flatten(2).amax(2) > 0).sum(1)
    assert (read <= 3).all()  # at most the 3 channels the first unit computed: cost ~ d^2 inside
    hand = 3 * 4 * 9 * 36 + 4 * 8 + 3 * read * 9 * 36 + 8 * 8  # both units, their predictors included
    assert macs.tolist() == hand.double().tolist()
    assert second.last_macs.tolist() == (3 * read * 9 * 36 + 64).double().tolist()


def test_l1_term_adds_lambda_times_the_saliency_norm():
    net, unit = _unit()
    net.train()
    net(torch.randn(5, 1, 6, 6))
    s = unit.selector.last_saliency
    state = SimpleNamespace(model=net, loss=torch.tensor(1.0))
    SaliencyL1(0.5).on_before_backward(state)
    torch.testing.assert_close(state.loss, 1.0 + 0.5 * s.sum(1).mean())
    state.loss.backward()
    assert unit.selector.fc.weight.grad is not None  # the term trains the predictors


def test_defaults_engage_meet_the_target_and_vary_per_input():
    res, ctx = run("fbs", target="macs=0.6")
    t = res.telemetry
    assert res.engaged is True and not res.warnings
    assert t["macs_max"] <= 0.6 and t["density"] < 1 and t["varying"] > 0 and t["steps"] == 4
    assert set(D.gated_units(ctx.model)) == {"3", "6"}  # the first conv stays dense


def test_density_one_does_nothing_and_warns_with_the_knob():
    with pytest.warns(MechanismWarning, match="density below 1"):
        res, _ = run("fbs", target="macs=1.0", density=1.0)
    assert res.engaged is False and res.telemetry["varying"] == 0


def test_a_sparsity_target_is_refused_and_the_model_is_left_as_it_was():
    model = chain_net()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match=r"target='sparsity=0.5'.*macs=F"):
        run("fbs", target="sparsity=0.5", model=model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not D.gated_units(model)
