"""SCP (Kang & Han, ICML 2020): soft masks from the BN+ReLU deactivation probability, trained with a sparsity loss."""
import math

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods import get_method, load_all
from prunekit.methods._soft_masks import bn_relu_off_probability, relaxed_bernoulli

from method_setups import conv_batches, conv_ctx, tiny_convnet

load_all()
FROZEN = pk.TrainConfig(lr=1e-12, weight_decay=0.0, momentum=0.0, scheduler="constant", progress=False)


def test_the_off_probability_matches_a_monte_carlo_estimate_of_relu_of_the_bn_output():
    gamma, beta = torch.tensor([0.5, 2.0, 1.0, 0.3]), torch.tensor([0.2, -1.0, 0.0, -0.9])
    g = torch.Generator().manual_seed(0)
    y = beta + gamma * torch.randn(200_000, 4, generator=g)  # the BN output read as N(beta, gamma^2)
    mc = (torch.relu(y) == 0).float().mean(0)
    assert bn_relu_off_probability(gamma, beta).tolist() == pytest.approx(mc.tolist(), abs=4e-3)


def test_a_channel_with_beta_minus_three_gamma_is_off_with_probability_above_0_99_and_its_gradient_is_by_hand():
    gamma, beta = torch.tensor([0.7], requires_grad=True), torch.tensor([-2.1], requires_grad=True)
    p = bn_relu_off_probability(gamma, beta)
    assert p.item() >= 0.99 and p.item() == pytest.approx(0.5 * math.erfc(-3 / math.sqrt(2)))
    p.backward()  # d Phi(-b/g) / db = -phi(b/g) / g ; d/dg = phi(b/g) * b / g^2
    phi = math.exp(-4.5) / math.sqrt(2 * math.pi)
    assert float(beta.grad) == pytest.approx(-phi / 0.7, rel=1e-5)
    assert float(gamma.grad) == pytest.approx(phi * -2.1 / 0.49, rel=1e-5)


def test_relaxed_masks_are_on_with_the_given_probability_at_low_temperature():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(100_000, generator=g).clamp(1e-6, 1 - 1e-6)
    m = relaxed_bernoulli(torch.full((100_000,), 0.3), 0.05, torch.log(u) - torch.log1p(-u))
    assert float((m > 0.5).float().mean()) == pytest.approx(0.3, abs=0.01)


def test_a_planted_channel_switched_off_by_bn_and_relu_is_pruned_first_even_with_a_larger_norm():
    m = tiny_convnet()
    with torch.no_grad():
        m[0].weight[1].fill_(7.0)  # the largest filter: any norm criterion keeps it
        m[1].weight[1], m[1].bias[1] = 2.0, -6.0  # the largest |gamma| (slimming keeps it), but beta = -3 |gamma|:
        # BN+ReLU switches it off with probability 0.9987
    data = conv_batches(2)
    with pytest.warns(MechanismWarning):  # no training (lr ~ 0): nothing new was switched off
        res = get_method("scp").run(conv_ctx(m, data, target="macs=0.9", train_config=FROZEN))
    assert res.telemetry["off_channels_before"] == 1 and res.telemetry["removed_off_share"] > 0
    assert m[0].out_channels < 4 and not (m[0].weight == 7.0).all((1, 2, 3)).any()


def test_the_sparsity_loss_switches_channels_off_and_they_are_the_ones_removed():
    m = tiny_convnet()
    data = conv_batches(6, labels="tercile")
    res = get_method("scp").run(conv_ctx(m, data, prune_epochs=2, options={"strength": 1.0}))
    t = res.telemetry
    assert res.engaged is True and t["off_channels"] > t["off_channels_before"] == 0
    assert t["removed_off_share"] == 1.0 and res.info["kept_macs_fraction"] <= 0.5


def test_the_sparsity_loss_stops_once_the_switched_off_channels_meet_the_target():
    """Left on for 36 steps (lr 0.02) the loss switches all 10 channels of tiny_convnet off (MACs 0.072 of the
    dense net for a macs=0.7 target); with the stop it ends at step 27, where the channels off first meet the
    target (6 of them: they go off in a batch at this size) and 6 are off at the end."""
    out = {}
    for stop in (True, False):
        res = get_method("scp").run(conv_ctx(
            tiny_convnet(), conv_batches(6, labels="tercile"), prune_epochs=6, target="macs=0.7",
            options={"strength": 1.0, "stop_at_target": stop},
            train_config=pk.TrainConfig(lr=0.02, weight_decay=0.0, scheduler="constant", progress=False)))
        out[stop] = (res.telemetry, res.info["kept_macs_fraction"])
    (on, f_on), (off, f_off) = out[True], out[False]
    assert on["stopped_at"] == 27 and off["stopped_at"] is None
    assert (on["off_channels"], off["off_channels"]) == (6, 10)
    assert f_on == pytest.approx(0.144, abs=1e-3) and f_off == pytest.approx(0.072, abs=1e-3)


def test_a_strength_of_zero_switches_nothing_off_and_warns():
    m = tiny_convnet()
    data = conv_batches(6, labels="tercile")
    with pytest.warns(MechanismWarning, match="options.strength"):
        res = get_method("scp").run(conv_ctx(m, data, options={"strength": 0.0}))
    assert res.engaged is False and res.telemetry["off_channels"] == 0


def test_the_flops_weighted_variant_runs_and_meets_the_target():
    m = tiny_convnet()
    data = conv_batches(6, labels="tercile")
    res = get_method("scp").run(conv_ctx(m, data, prune_epochs=2, options={"strength": 1.0, "sparsity": "macs"}))
    assert res.engaged is True and res.info["kept_macs_fraction"] <= 0.5


def test_bad_input_leaves_the_model_as_it_was():
    m = tiny_convnet()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    data = conv_batches(2)
    with pytest.raises(ConfigError, match="threshold"):
        get_method("scp").run(conv_ctx(m, data, options={"threshold": 0.3}))
    with pytest.raises(ConfigError, match="sparsity"):
        get_method("scp").run(conv_ctx(m, data, options={"sparsity": "flops"}))
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(ConfigError, match="no affine BatchNorm"):
        get_method("scp").run(conv_ctx(plain, data))
