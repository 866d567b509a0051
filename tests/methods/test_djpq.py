"""DJPQ: the BOPs counter by hand, the gate and bit-width gradients, joint training engaging, the warning."""
import math

import pytest
import torch
from torch import nn

from method_setups import conv_batches, conv_ctx, tiny_convnet
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods import get_method, load_all
from prunekit.methods.djpq import VIBGates, count_bops
from prunekit.quantize import FakeQuant

load_all()


def test_bops_equal_macs_times_weight_bits_times_activation_bits_after_removing_a_channel():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    with torch.no_grad():  # remove output channel 1 of the conv and its 25 inputs of the linear layer by hand
        keep = [0, 2, 3]
        conv = nn.Conv2d(2, 3, 3, padding=1)
        conv.weight.copy_(net[0].weight[keep])
        conv.bias.copy_(net[0].bias[keep])
        lin = nn.Linear(3 * 25, 3)
        lin.weight.copy_(net[3].weight.view(3, 4, 25)[:, keep].reshape(3, 75))
        net[0], net[3] = conv, lin
    bops = count_bops(net, torch.randn(1, 2, 5, 5), {"0": 4, "3": 2}, {"0": 8, "3": 3})
    conv_macs = 5 * 5 * 3 * 2 * 3 * 3  # out positions x out channels x in channels x kernel
    lin_macs = 75 * 3
    assert bops["per_module"] == {"0": conv_macs * 4 * 8, "3": lin_macs * 2 * 3}
    assert bops["total"] == conv_macs * 32 + lin_macs * 6


def test_gate_gradient_is_the_kl_bound_derivative_and_noise_only_in_training():
    m = tiny_convnet()
    gates = VIBGates(m, ["1"], init_log_sigma=math.log(0.5))
    with torch.no_grad():
        gates.mu["1"].copy_(torch.tensor([1.0, 0.5, 2.0, 0.0]))
    gates.kl().backward()
    mu, var = torch.tensor([1.0, 0.5, 2.0, 0.0]), 0.25
    # d/dmu log(1 + mu^2/var) = 2 mu / (var + mu^2); d/dlog_sigma = -2 (mu^2/var) / (1 + mu^2/var)
    torch.testing.assert_close(gates.mu["1"].grad, 2 * mu / (var + mu ** 2))
    torch.testing.assert_close(gates.log_sigma["1"].grad, -2 * (mu ** 2 / var) / (1 + mu ** 2 / var))
    x = torch.randn(2, 1, 6, 6)
    m.eval()
    a, b = m(x), m(x)
    assert torch.equal(a, b)  # eval: z = mu
    m.train()
    assert not torch.equal(m(x), m(x))  # training: z = mu + sigma * eps


def test_bit_width_gradient_follows_uhlich_parametrisation():
    fq = FakeQuant(4, learn="step_qmax").init_from(torch.tensor([7.0]))  # qmax 7, step 1, n = 7
    fq.bits.backward()
    n = 7.0
    assert float(fq.log_step.grad) == pytest.approx(-n / (n + 1) / math.log(2))
    assert float(fq.log_qmax.grad) == pytest.approx(n / (n + 1) / math.log(2))


def test_joint_training_prunes_by_snr_and_lowers_bits():
    model = tiny_convnet()
    res = get_method("djpq").run(conv_ctx(model, conv_batches(8, "tercile"), prune_epochs=2,
                                          options={"aux_lr": 0.2}))
    t = res.telemetry
    assert res.engaged is True and t["snr_pruned"] >= 1 and t["mean_bits_w"] < 8
    assert res.info["bops"] < res.info["bops_pruned_fp32"] < res.info["dense_bops"]
    assert res.info["kept_macs_fraction"] <= 0.5 * 1.01
    for name, bits in res.info["bits_w"].items():  # the saved weights are on a grid of at most 2^b - 1 levels
        w = model.get_submodule(name).weight.detach()
        assert torch.unique(w).numel() <= 2 ** bits - 1


def test_no_pressure_no_learning_warns():
    model = tiny_convnet()
    with pytest.warns(MechanismWarning, match="raise options.gamma"):
        res = get_method("djpq").run(conv_ctx(model, conv_batches(4, "tercile"),
                                              options={"gamma": 0.0, "vib_weight": 0.0, "aux_lr": 1e-9}))
    assert res.engaged is False and res.telemetry["snr_pruned"] == 0


def test_a_model_without_batchnorm_is_refused_unchanged():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="BatchNorm"):
        get_method("djpq").run(conv_ctx(model, conv_batches(2)))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_at_its_defaults_joint_training_engages_on_the_tiny_net_within_240_steps():
    """The defaults' aux_lr (1e-2) needs a few hundred Adam steps to move log(step) and log(sigma) by ~2-3."""
    model = tiny_convnet()
    res = get_method("djpq").run(conv_ctx(model, conv_batches(40, "tercile"), prune_epochs=6))
    assert res.engaged is True and res.telemetry["snr_pruned"] >= 1 and res.telemetry["mean_bits_w"] < 8
