"""LFPC (He et al., CVPR 2020): a Gumbel-softmax sampler learns each layer's criterion; soft pruning uses it."""
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods import get_method, load_all
from prunekit.methods.lfpc import LayerCriterionSampler, PerLayerSoftFilterMask

from method_setups import bundle_ctx, conv_batches, conv_ctx, tiny_convnet, vgg_synthetic

load_all()


def _planted_layers():
    """Two 1x1 convs with the same five 2-d filters: four corners around (25, 25) and the centre. L2 zeroes the
    smallest corner (index 0), the geometric median (FPGM) zeroes the centre (index 4)."""
    w = torch.tensor([[20.0, 20.0], [30.0, 20.0], [20.0, 30.0], [30.0, 30.0], [25.0, 25.0]]).reshape(5, 2, 1, 1)
    a, b = nn.Conv2d(2, 5, 1), nn.Conv2d(2, 5, 1)
    with torch.no_grad():
        a.weight.copy_(w)
        b.weight.copy_(w)
    return {"a": a, "b": b}


def test_each_layer_is_soft_pruned_with_its_own_criterion():
    layers = _planted_layers()
    cb = PerLayerSoftFilterMask(layers, {"a": 1, "b": 1}, {"a": "l2", "b": "fpgm"})
    chosen = cb.apply()
    assert chosen["a"].tolist() == [0] and chosen["b"].tolist() == [4]
    assert layers["a"].weight[0].abs().sum() == 0 and layers["b"].weight[4].abs().sum() == 0
    assert layers["a"].bias[0] == 0 and layers["b"].bias[4] == 0


def _planted_net():
    """conv(2->5, 1x1) - ReLU - linear readout of channel 4 (the geometric median) only: the loss needs the centre
    filter, which FPGM prunes and L1/L2 keep."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 5, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 2))
    with torch.no_grad():
        net[0].weight.copy_(_planted_layers()["a"].weight / 25)
        net[0].bias.zero_()
        net[4].weight.zero_()
        net[4].weight[0, 4], net[4].weight[1, 4] = 3.0, -3.0
        net[4].bias.zero_()
    x = torch.rand(64, 2, 3, 3)
    return net, [(x, torch.zeros(64, dtype=torch.long))]


def test_the_sampler_learns_to_avoid_the_criterion_that_prunes_the_filter_the_loss_needs():
    net, batches = _planted_net()
    s = LayerCriterionSampler(net, [["0"]], {"0": 1}, ("l2", "fpgm"), tau=1.0, lr=0.1, seed=0)
    s.search(batches, 30)
    p = s.choices["0"].probs()
    assert s.choices["0"].chosen() == "l2" and p[0] > 0.8
    assert s.entropies[-1] < s.entropies[0]
    assert net[0].weight.grad is None and all(q.requires_grad for q in net.parameters())  # weights left alone


def test_the_search_trains_only_the_sampler_and_leaves_weights_and_bn_statistics_unchanged():
    m = tiny_convnet()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    s = LayerCriterionSampler(m, [["0"], ["3"]], {"0": 2, "3": 3}, ("l1", "l2", "fpgm"), tau=1.0, lr=0.1)
    s.search(conv_batches(2), 4)
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())
    assert not any(mod._forward_hooks for mod in m.modules()) and m.training


def test_on_a_small_vgg_the_sampler_entropy_falls_and_soft_pruning_reselects():
    model, data = vgg_synthetic(n_train=64, n_test=32, batch_size=32)
    ctx = bundle_ctx(model, data, prune_epochs=2, train_config=pk.TrainConfig(lr=0.05, progress=False))
    res = get_method("lfpc").run(ctx)
    t = res.telemetry
    assert res.engaged is True and t["entropy_end"] < t["entropy_start"]
    assert t["selections"] == 2 and set(t["chosen"].values()) <= {"l1", "l2", "fpgm"}
    assert all(1 / 3 <= p <= 1 for p in t["probability"].values())
    assert res.info["kept_macs_fraction"] <= 0.5


def test_without_search_steps_the_choice_stays_uniform_and_warns():
    m = tiny_convnet()
    with pytest.warns(MechanismWarning, match="search_steps"):
        res = get_method("lfpc").run(conv_ctx(m, conv_batches(4), options={"search_steps": 0}))
    assert res.engaged is False and res.telemetry["entropy_end"] == res.telemetry["entropy_start"]


def test_bad_input_leaves_the_model_as_it_was():
    m = tiny_convnet()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    data = conv_batches(2)
    with pytest.raises(ConfigError, match="needs"):
        get_method("lfpc").run(conv_ctx(m, data, options={"criteria": ["l1", "taylor"]}))
    with pytest.raises(ConfigError, match="temperature"):
        get_method("lfpc").run(conv_ctx(m, data, options={"temperature": 0}))
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())
