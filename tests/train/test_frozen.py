"""Frozen-weight score training (prunekit/train/frozen.py): weights bit-identical, exact top-k, gradients reach
the scores and gates, the edge-popup and gate updates computed by hand."""
import pytest
import torch
from torch import nn

from prunekit.train import TrainConfig, fit
from prunekit.train.frozen import (ClampGates, FrozenChannelGates, FrozenWeights, GateMeanPenalty, Supermask,
                                   WeightsChanged, changed_weights, kept_count, topk_mask, weight_fingerprint)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3))


def _data(n=4, d=6, classes=3):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, d, generator=g), torch.randint(0, classes, (16,), generator=g)) for _ in range(n)]


def _bytes(model):
    return {k: v.detach().numpy().tobytes() for k, v in model.state_dict().items()}


def test_fingerprint_detects_a_one_ulp_change_and_nothing_else():
    m = _mlp()
    fp = weight_fingerprint(m)
    assert changed_weights(m, fp) == []
    with torch.no_grad():
        m[2].bias[1] = torch.nextafter(m[2].bias[1], torch.tensor(1.0))
    assert changed_weights(m, fp) == ["2.bias"]


def test_frozen_weights_raises_when_a_weight_was_written_and_restores_requires_grad():
    m = _mlp()
    m[0].bias.requires_grad_(False)
    with pytest.raises(WeightsChanged, match=r"\['0.weight'\]"):
        with FrozenWeights(m):
            with torch.no_grad():
                m[0].weight[0, 0] += 1.0
    assert m[0].weight.requires_grad and not m[0].bias.requires_grad


@pytest.mark.parametrize("numel, sparsity, expected", [(10, 0.5, 5), (7, 0.5, 4), (100, 0.9, 10), (3, 0.0, 3)])
def test_topk_mask_keeps_exactly_k(numel, sparsity, expected):
    k = kept_count(numel, sparsity)
    assert k == expected
    s = torch.randn(numel, generator=torch.Generator().manual_seed(numel))
    m = topk_mask(s, k)
    assert int(m.sum()) == k and set(m.unique().tolist()) <= {0.0, 1.0}
    assert bool((s[m.bool()].min() >= s[~m.bool()]).all())  # the kept are the largest


def test_supermask_trains_only_scores_with_weights_bit_identical_and_exact_k_per_layer():
    m = _mlp()
    before = _bytes(m)
    with FrozenWeights(m) as fw:
        net = Supermask(m, {"0.weight": 0.5, "2.weight": 0.7}, generator=torch.Generator().manual_seed(0))
        start = net.masks()
        fit(net, _data(), TrainConfig(epochs=3, lr=0.5, progress=False))
        end = net.masks()
    assert fw.changed == [] and _bytes(m) == before  # every weight and bias byte for byte
    assert int(end["0.weight"].sum()) == 30 and int(end["2.weight"].sum()) == 30 - int(0.7 * 30)
    assert any(not torch.equal(start[f], end[f]) for f in start)  # the scores reordered: the mask moved


def test_supermask_score_gradient_is_the_edge_popup_rule_by_hand():
    # y = sum_j (w_j * m_j) x_j with scores s = [3, -2, 1, 0.5], k = 2 -> m = [1, 1, 0, 0];
    # edge-popup: dL/ds_j = dL/dy * x_j * w_j for every j (kept or not), times sign(s_j) through |s|
    lin = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.5, -1.0, 2.0, 4.0]]))
    net = Supermask(lin, {"weight": 0.5})
    with torch.no_grad():
        net.scores["weight"].copy_(torch.tensor([[3.0, -2.0, 1.0, 0.5]]))
    x = torch.tensor([[1.0, 2.0, 3.0, -1.0]])
    y = net(x)
    assert y.item() == pytest.approx(0.5 * 1 + -1.0 * 2)
    y.sum().backward()
    expected = torch.tensor([[0.5 * 1, -(-1.0 * 2), 2.0 * 3, 4.0 * -1]])
    torch.testing.assert_close(net.scores["weight"].grad, expected)
    assert lin.weight.grad is None


def test_channel_gates_scale_the_channel_output_and_get_the_gradient_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(4, 1, 5, 5)
    model(x)
    model.eval()
    net = FrozenChannelGates(model, {"c": ["1.weight", "1.bias"]})
    with torch.no_grad():
        net.gate("c").copy_(torch.tensor([1.0, 0.0, 0.5]))
    bn_out = model[1](model[0](x))
    head = nn.Sequential(*list(model)[2:])
    expected = head(bn_out * torch.tensor([1.0, 0.0, 0.5]).view(1, 3, 1, 1))
    torch.testing.assert_close(net(x), expected)
    # d(sum of the gated BN output)/dg_c = sum of channel c's ungated BN output
    probe = FrozenChannelGates(nn.Sequential(model[0], model[1]), {"c": ["1.weight", "1.bias"]})
    probe(x).sum().backward()
    torch.testing.assert_close(probe.gate("c").grad, bn_out.sum(dim=(0, 2, 3)))


def test_gate_penalty_pulls_the_mean_to_r_and_clamping_keeps_gates_in_unit_interval():
    m = _mlp()
    before = _bytes(m)
    with FrozenWeights(m) as fw:
        net = FrozenChannelGates(m, {"h": ["0.weight", "0.bias"]})
        cfg = TrainConfig(epochs=30, lr=0.05, optimizer="adam", weight_decay=0.0, scheduler="constant",
                          progress=False)
        fit(net, _data(), cfg, callbacks=[GateMeanPenalty(net, lam=50.0, r=0.2), ClampGates(net)])
    g = net.gate("h").detach()
    assert fw.changed == [] and _bytes(m) == before
    assert float(g.min()) >= 0.0 and float(g.max()) <= 1.0
    assert abs(float(g.mean()) - 0.2) < 0.05  # from 1.0 at the start


def test_gate_penalty_value_by_hand():
    m = _mlp()
    net = FrozenChannelGates(m, {"h": ["0.weight", "0.bias"]}, init=0.6)

    class S:
        loss = torch.tensor(1.0)

    GateMeanPenalty(net, lam=0.5, r=0.2).on_before_backward(S)
    assert S.loss.item() == pytest.approx(1.0 + 0.5 * 0.4 ** 2)


def test_gates_refuse_a_parameter_gated_twice_or_unknown():
    m = _mlp()
    with pytest.raises(ValueError, match="gated by both"):
        FrozenChannelGates(m, {"a": ["0.weight"], "b": ["0.weight"]})
    with pytest.raises(ValueError, match="not a parameter"):
        FrozenChannelGates(m, {"a": ["0.weigth"]})
