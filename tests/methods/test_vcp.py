"""VCP: the Gaussian KL and the posterior rule on a planted useless channel, engagement, errors."""
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.vcp import rule_scores
from prunekit.train.variational import kl_gaussian

from method_setups import planted_bn_channel

load_all()


def planted(n=512, batch=16, seed=0):
    return planted_bn_channel(n, batch, seed)


def ctx_for(model, data, epochs, **options):
    return RunContext(model=model, example_inputs=data[0][0][:2], target="macs=0.99", train_data=data,
                      prune_epochs=epochs, options=options,
                      train_config=pk.TrainConfig(lr=0.1, momentum=0.0, weight_decay=0.0, scheduler="constant",
                                                  progress=False))


def test_kl_and_rule_on_a_planted_useless_channel_by_hand():
    # channel 0: mu = 1, sigma = 0.05 (the data holds it); channel 1: at the prior N(0, 0.1^2) (useless)
    mu = torch.tensor([1.0, 0.0])
    log_s2 = torch.log(torch.tensor([0.05 ** 2, 0.1 ** 2]))
    kl = kl_gaussian(mu, log_s2, 0.1)
    # log(0.1 / 0.05) + (0.0025 + 1) / 0.02 - 0.5 = 0.6931 + 50.125 - 0.5; the useless channel costs nothing
    assert kl.tolist() == pytest.approx([0.693147 + 50.125 - 0.5, 0.0], abs=1e-4)
    stats = {"bn": {"snr": mu.abs() / (0.5 * log_s2).exp()}}
    assert rule_scores(stats, 1.0)["bn"].tolist() == pytest.approx([20.0, 0.0])  # SNR 20 kept, SNR 0 removed first


def test_the_elbo_removes_the_planted_channel_at_the_defaults_and_keeps_the_informative_one():
    model, data = planted()
    res = get_method("vcp").run(ctx_for(model, data, epochs=4))
    assert res.engaged is True and res.telemetry["channels_under_rule"] == 1
    assert res.telemetry["kl"] < res.telemetry["kl_before"]
    assert res.info["kl_weight"] == pytest.approx(1 / 512)  # KL / N: the ELBO per example
    assert model[1].num_features == 1
    assert model[0].weight.tolist() == [[1.0, 0.0]]  # the survivor reads x0: the label's channel


def test_without_the_kl_nothing_collapses_and_the_run_warns_with_the_knob():
    model, data = planted(n=64)
    with pytest.warns(MechanismWarning, match="raise options.kl_scale"):
        res = get_method("vcp").run(ctx_for(model, data, epochs=1, kl_scale=0.0))
    assert res.engaged is False and res.telemetry["channels_under_rule"] == 0


def test_a_model_without_batchnorm_is_refused_and_left_unchanged():
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = [(torch.randn(8, 2), torch.randint(0, 2, (8,)))]
    with pytest.raises(ConfigError, match="no affine BatchNorm"):
        get_method("vcp").run(ctx_for(model, data, epochs=1))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="snr_threshold"):
        get_method("vcp").resolve({"snr_threshold": 0.0})
