"""The slimmable block: per-forward widths on the live model, exact against a physically pruned copy."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit import workflows as W
from prunekit.allocate.search import SearchSpace
from prunekit.errors import ConfigError
from prunekit.train.slimmable import SandwichRule, Slimmable, SlimmableNet, WidthSampler, ratio_grid


def _model(name: str):
    torch.manual_seed(0)
    m = W.resolve_model(name, in_channels=1, input_size=16).double()
    with torch.no_grad():  # statistics and affine terms away from their defaults: a removed channel would show
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.5, 2)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
    return m.eval()


@pytest.mark.parametrize("name", ["resnet20", "vgg-small"])
def test_every_sampled_width_computes_what_the_pruned_copy_computes_in_float64(name):
    m = _model(name)
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    before = copy.deepcopy(m.state_dict())
    s = Slimmable(m, x)
    sampler = WidthSampler(s.space, grid=(0.25, 0.5, 0.75, 1.0))
    rng = np.random.default_rng(0)
    full = m(x)
    for w in [sampler.smallest(), sampler.uniform(rng), sampler.uniform(rng)]:
        assert s.max_error(w, x) < 1e-12
        assert float((s.forward(x, widths=w) - full).abs().max().detach()) > 1e-3  # a real sub-network, not the full one
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())  # the model never changed


def test_index_order_keeps_the_first_channels_and_criterion_order_the_best_scored():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([0.1, 3.0, 0.2, 2.0]).view(4, 1, 1, 1))
    x = torch.randn(1, 1, 2, 2)
    idx, crit = Slimmable(m, x), Slimmable(m, x, order="criterion", criterion="l1")
    assert idx.keep((2,)).tolist() == [1, 1, 0, 0]
    assert crit.keep((2,)).tolist() == [0, 1, 0, 1]  # the two largest L1 filters
    w = crit.weights(crit.keep((2,)))["2.weight"]
    assert w[:, [0, 2]].abs().sum() == 0 and torch.equal(w[:, [1, 3]], m[2].weight[:, [1, 3]])


def test_gradients_reach_the_shared_weights_only_through_the_kept_channels():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    s = Slimmable(m, torch.randn(2, 3))
    s.forward(torch.randn(5, 3), widths=(2,)).sum().backward()
    assert m[2].weight.grad[:, 2:].abs().sum() == 0 and m[2].weight.grad[:, :2].abs().sum() > 0


def test_soft_keep_scales_what_the_readers_see_of_each_channel():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(2, 3, bias=False), nn.Linear(3, 1, bias=False))
    s = Slimmable(m, torch.randn(1, 2))
    p = torch.tensor([1.0, 0.5, 0.25])
    x = torch.randn(4, 2)
    expected = (m[0](x) * p) @ m[1].weight.t()
    assert torch.allclose(s.forward(x, keep=s.soft_keep([p])), expected)


def test_coupled_groups_must_ask_one_width_and_the_refusal_names_them():
    m = _model("resnet20")
    s = Slimmable(m, torch.zeros(1, 1, 16, 16, dtype=torch.float64))
    assert s.widths_of({"layer1.0.conv1": 8})[1] == 8
    with pytest.raises(ConfigError, match=r"share their output channels \(coupled group .*layer1.0.conv2.*layer1.1.conv2"):
        s.widths_of({"layer1.0.conv2": 8, "layer1.1.conv2": 12})
    with pytest.raises(ConfigError, match="'nope' has no prunable"):
        s.widths_of({"nope": 8})
    with pytest.raises(ConfigError, match="widths outside their groups' ranges: conv1=99"):
        s.keep((99,) + s.space.full()[1:])


def test_samplers_uniform_per_group_and_the_sandwich_rule():
    space = SearchSpace.of(["a", "b"], [8, 4])
    s = WidthSampler(space, grid=(0.25, 0.5, 1.0))
    rng = np.random.default_rng(0)
    draws = [s.uniform(rng) for _ in range(300)]
    for i, choices in enumerate(s.choices):
        counts = [sum(d[i] == c for d in draws) for c in choices]
        assert all(70 <= n <= 130 for n in counts)  # about 100 each of 3 choices
    sw = s.sandwich(np.random.default_rng(1), n=2)
    assert sw[0] == (8, 4) and sw[1] == (2, 1) and len(sw) == 4
    assert s.snap((7, 1.4)) == (8, 1) and s.snap((5, 3)) == (4, 2) and s.index((4, 2)) == (1, 1)
    assert ratio_grid(0.1, 1.0, 0.03)[:3] == (0.1, 0.13, 0.16) and len(ratio_grid(0.1, 1.0, 0.03)) == 31


def test_sandwich_callback_trains_four_widths_per_step_in_fit():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                      nn.Flatten(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(3)]
    s = Slimmable(m, data[0][0][:1])
    net = SlimmableNet(s)
    cb = SandwichRule(net, WidthSampler(s.space), n=2)
    first = m[0].weight.detach().clone()
    pk.fit(net, data, pk.TrainConfig(epochs=1, lr=0.1, progress=False), callbacks=[cb])
    assert cb.steps == 3 and len(cb.widths_seen) >= 4 and (8,) in cb.widths_seen and (1,) in cb.widths_seen
    assert not torch.equal(first, m[0].weight)  # the wrapped model's own weights were trained
