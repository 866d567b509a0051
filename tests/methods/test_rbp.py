"""RBP: the log-uniform KL and the log-alpha rule on a planted channel, the layer-by-layer recursion, engagement."""
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import MechanismWarning
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods import rbp as rbp_module
from prunekit.methods.rbp import redundant_channels
from prunekit.train.variational import ChannelNoiseGates, kl_log_uniform, log_alpha

from method_setups import planted_bn_channel

load_all()


def planted(n=64, batch=8, seed=0):
    return planted_bn_channel(n, batch, seed)


def ctx_for(model, data, epochs, target="macs=0.99", **options):
    return RunContext(model=model, example_inputs=data[0][0][:2], target=target, train_data=data,
                      prune_epochs=epochs, options=options,
                      train_config=pk.TrainConfig(lr=0.1, momentum=0.0, weight_decay=0.0, scheduler="constant",
                                                  progress=False))


def test_log_alpha_rule_and_kl_on_a_planted_channel_by_hand():
    # channel 0: theta ~ N(1, 0.01): log alpha = log 0.01 = -4.6 (kept); channel 1: N(0.01, 0.1):
    # log alpha = log(0.1 / 1e-4) = log 1000 = 6.9 > 3 (removed)
    mu, log_s2 = torch.tensor([1.0, 0.01]), torch.log(torch.tensor([0.01, 0.1]))
    la = log_alpha(mu, log_s2)
    assert la.tolist() == pytest.approx([-4.60517, 6.907755], abs=1e-4)
    assert redundant_channels({"bn": {"log_alpha": la}}, 3.0).tolist() == [1]
    kl = kl_log_uniform(mu, log_s2)
    assert kl[0] > kl[1] > 0  # the prior prefers the noisy (redundant) channel


def test_the_prior_removes_the_planted_channel_at_the_defaults():
    model, data = planted()
    res = get_method("rbp").run(ctx_for(model, data, epochs=15))
    assert res.engaged is True and res.telemetry["channels_under_rule"] == 1
    assert res.info["removed_per_layer"] == {"0": 1} and res.info["removed_channels"] == 0  # the rule, not the target
    assert model[0].weight.tolist() == [[1.0, 0.0]]  # the survivor reads x0: the label's channel


def test_each_layer_learns_its_noise_on_the_network_already_pruned_before_it(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 5), nn.BatchNorm1d(5),
                          nn.ReLU(), nn.Linear(5, 2))
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(2)]
    seen = []

    class Spy(ChannelNoiseGates):
        def __init__(self, modules, **kw):
            seen.append({f: m.num_features for f, m in modules.items()} | {"reads": model[3].in_features})
            super().__init__(modules, **kw)
            if len(seen) == 1:  # layer 1's noise: channels 0 and 3 pure noise (log alpha far above 3)
                with torch.no_grad():
                    self.mu["1"][[0, 3]] = 1e-4

        def on_after_step(self, state):  # keep the planted values (no update of the noise parameters)
            self.steps += 1

    monkeypatch.setattr(rbp_module, "ChannelNoiseGates", Spy)
    res = get_method("rbp").run(ctx_for(model, data, epochs=1, target="macs=0.99"))
    assert seen[0] == {"1": 6, "reads": 6}
    assert seen[1] == {"4": 5, "reads": 4}  # layer 2's noise learned with layer 1 already cut to 4 channels
    assert res.info["removed_per_layer"]["0"] == 2


def test_without_the_prior_no_noise_grows_and_the_run_warns_with_the_knob():
    model, data = planted()
    with pytest.warns(MechanismWarning, match="raise options.kl_scale"):
        res = get_method("rbp").run(ctx_for(model, data, epochs=1, kl_scale=0.0))
    assert res.engaged is False and res.telemetry["channels_under_rule"] == 0
