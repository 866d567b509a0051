"""The hypernetwork block (DHP's weight generator, latents, proximal step, conversion to a compact model)."""
import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.graph import build_graph
from prunekit.errors import ConfigError
from prunekit.train.hypernet import HyperNet, ProximalLatents, WeightGenerator, proximal_, soft_threshold


def _chain():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))


def _latent_of(hyper, model, fqn):
    """The group latent behind the output channels of ``fqn``'s weight."""
    gid = hyper._where[(fqn, 0)][0]
    return hyper.latents[str(gid)]


def test_weight_generator_follows_the_papers_three_steps_by_hand():
    z_out, z_in = nn.Parameter(torch.tensor([2.0, -1.0])), nn.Parameter(torch.tensor([0.5, 3.0, 1.0]))
    g = WeightGenerator((2, 3, 1, 1), z_out, z_in, embed=2)
    with torch.no_grad():
        g.bias0.fill_(0.1)
        g.weight1.fill_(1.0)
        g.bias1.fill_(0.5)
        g.weight2.fill_(2.0)
        g.bias2.fill_(-1.0)
    # M = z_out z_in^T + 0.1; E = M * 1 + 0.5 (both embedding dims); W = sum_e E * 2 - 1 = 4 (M + 0.5) - 1
    m = torch.outer(z_out, z_in) + 0.1
    expected = (4 * (m + 0.5) - 1).reshape(2, 3, 1, 1)
    torch.testing.assert_close(g.generate(), expected)
    with torch.no_grad():
        z_out[1] = 0.001  # below the threshold: its filter is masked out, and its gradient still flows
    w = g(None)
    assert torch.count_nonzero(w[1]) == 0 and torch.count_nonzero(w[0]) == 3
    w.sum().backward()
    assert z_out.grad[1] != 0  # straight-through: the pruned entry can grow back


def test_zeroing_a_latent_entry_removes_its_filter_and_every_kernel_reading_it():
    model = _chain()
    x = torch.randn(2, 1, 6, 6)
    hyper = HyperNet(model, x[:1])
    assert hyper.generated == ["0", "3"] and [f for f, _, _ in hyper.masked] == ["8.weight"]
    z1 = _latent_of(hyper, model, "0.weight")
    w0, w3 = model[0].weight, model[3].weight  # generated now
    assert torch.count_nonzero(w0[2]) > 0 and torch.count_nonzero(w3[:, 2]) > 0
    with torch.no_grad():
        z1[2] = 0.0
    w0, w3 = model[0].weight, model[3].weight
    assert torch.count_nonzero(w0[2]) == 0 and torch.count_nonzero(w0[[0, 1, 3]]) > 0
    assert torch.count_nonzero(w3[:, 2]) == 0 and torch.count_nonzero(w3[:, [0, 1, 3]]) > 0
    # so the channel contributes nothing downstream: perturbing its BN shift changes no logit
    model.eval()
    a = model(x)
    with torch.no_grad():
        model[1].bias[2] += 5.0
    torch.testing.assert_close(model(x), a)


def test_proximal_step_zeroes_a_latent_below_the_threshold_and_shrinks_the_others():
    assert soft_threshold(torch.tensor([0.3, -0.05, 0.1]), 0.1).tolist() == pytest.approx([0.2, 0.0, 0.0])
    model = _chain()
    hyper = HyperNet(model, torch.randn(1, 1, 6, 6))
    z = _latent_of(hyper, model, "3.weight")
    with torch.no_grad():
        z.copy_(torch.tensor([0.04, -0.5, 1.0, 0.2, -0.01, 0.3]))
    assert proximal_(hyper, 0.05) == 2  # 0.04 and -0.01 become exactly 0
    assert z.tolist() == pytest.approx([0.0, -0.45, 0.95, 0.15, 0.0, 0.25])
    assert sorted(hyper.pruned()[hyper._where[("3.weight", 0)][0]].tolist()) == [0, 4]


def test_proximal_step_never_empties_a_group():
    model = _chain()
    hyper = HyperNet(model, torch.randn(1, 1, 6, 6))
    proximal_(hyper, 100.0)
    for z in hyper.group_latents().values():
        assert int((z.abs() >= hyper.threshold).sum()) == 1


@pytest.mark.parametrize("name, kw", [("resnet20", {}), ("vgg-small", {"width": 0.25})])
def test_compact_model_reproduces_the_hypernetwork_models_logits(name, kw):
    torch.manual_seed(0)
    model = pk.models.create(name, **kw)
    x = torch.randn(4, 1, 28, 28)
    hyper = HyperNet(model, x[:1])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # prune about half of every group, shared latents of residual groups included
        for z in hyper.group_latents().values():
            z[torch.rand(len(z), generator=g) < 0.5] = 0.0
    ratio = hyper.macs_ratio()
    model.eval()
    with torch.no_grad():
        before = model(x)
    dense = sum(p.numel() for p in pk.models.create(name, **kw).parameters())
    out = hyper.to_compact_(model)
    assert out["removed"] > 0 and not any(nn.utils.parametrize.is_parametrized(m) for m in model.modules())
    with torch.no_grad():
        assert (model(x) - before).abs().max() < 1e-4
    assert sum(p.numel() for p in model.parameters()) < dense
    assert build_graph(model, x[:1]).macs() / build_graph(
        pk.models.create(name, **kw), x[:1]).macs() == pytest.approx(ratio, abs=1e-6)


def test_residual_group_shares_one_latent():
    torch.manual_seed(0)
    model = pk.models.create("resnet20")
    hyper = HyperNet(model, torch.randn(1, 1, 28, 28))
    a = hyper._where[("layer1.0.conv2.weight", 0)][0]
    b = hyper._where[("layer1.1.conv2.weight", 0)][0]
    assert a == b  # both blocks add into the same residual stream
    assert hyper._where[("layer1.0.conv1.weight", 0)][0] != a


def test_proximal_callback_stops_training_at_the_flops_target():
    model = _chain()
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(20)]
    hyper = HyperNet(model, data[0][0][:1])
    cb = ProximalLatents(hyper, gamma=3.0, stop_ratio=0.6)
    pk.fit(model, data, pk.TrainConfig(epochs=3, lr=0.1, scheduler="constant", progress=False), callbacks=[cb])
    assert cb.stopped_at is not None and cb.stopped_at < 60 and cb.steps == cb.stopped_at
    assert cb.ratio <= 0.6 and cb.zeroed > 0


def test_a_model_without_a_generatable_convolution_is_refused():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match="no convolution"):
        HyperNet(model, torch.randn(1, 4))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_group_no_generated_layer_touches_gets_no_latent():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 8), nn.ReLU(),
                          nn.Linear(8, 3))
    hyper = HyperNet(model, torch.randn(1, 1, 6, 6))
    conv_group = hyper._where[("0.weight", 0)][0]
    assert hyper.group_ids == [conv_group]  # the hidden Linear's 8 units are not the hypernetwork's to prune
    proximal_(hyper, 100.0)
    assert set(hyper.pruned()) == {conv_group}
