import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

import prunekit as pk
from prunekit.measure import count_params, sparsity, widths


class _Mask(nn.Module):
    def __init__(self, mask):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w):
        return w * self.mask


def test_count_params_by_hand():
    assert count_params(nn.Conv2d(3, 8, 3)) == 3 * 8 * 9 + 8
    assert count_params(nn.Conv2d(8, 8, 3, groups=8, bias=False)) == 8 * 9
    assert count_params(nn.BatchNorm2d(5)) == 10  # running stats are buffers, not parameters
    assert count_params(nn.LSTM(4, 6)) == 4 * 6 * (4 + 6) + 2 * 4 * 6
    assert count_params(pk.models.create("lenet300")) == 266610


def test_tied_weights_count_once():
    untied = pk.models.create("gpt-tiny", vocab_size=50, context_length=8)
    tied = pk.models.create("gpt-tiny", vocab_size=50, context_length=8, tie_weights=True)
    assert count_params(untied) - count_params(tied) == 50 * 64


def test_nonzero_counts_and_sparsity_per_layer():
    m = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    with torch.no_grad():
        m[0].weight[:3].zero_()  # 12 of 20 weights
        m[2].bias.zero_()  # 2 of 2 biases
    assert count_params(m) == 20 + 5 + 10 + 2
    assert count_params(m, nonzero=True) == 37 - 12 - 2
    s = sparsity(m)
    assert s.per_layer == pytest.approx({"0": 12 / 25, "2": 2 / 12})
    assert (s.zeros, s.total) == (14, 37) and s.overall == pytest.approx(14 / 37)
    w = sparsity(m, weights_only=True)
    assert w.per_layer == pytest.approx({"0": 12 / 20, "2": 0.0}) and (w.zeros, w.total) == (12, 30)


def test_parametrized_weights_are_counted_as_their_effective_value():
    lin = nn.Linear(4, 2)
    mask = torch.tensor([[1.0, 0, 0, 0], [1, 1, 0, 0]])
    parametrize.register_parametrization(lin, "weight", _Mask(mask))
    assert count_params(lin) == 10
    assert count_params(lin, nonzero=True) == 3 + 2
    assert sparsity(lin).per_layer == {"": pytest.approx(5 / 10)}


def test_widths_of_every_layer_kind():
    m = nn.ModuleDict({
        "conv": nn.Conv2d(3, 7, 3), "bn": nn.BatchNorm2d(7), "gn": nn.GroupNorm(2, 6), "ln": nn.LayerNorm(9),
        "emb": nn.Embedding(10, 11), "lstm": nn.LSTM(4, 12), "fc": nn.Linear(3, 13), "mha": nn.MultiheadAttention(8, 2),
        "relu": nn.ReLU(),
    })
    assert widths(m) == {"conv": 7, "bn": 7, "gn": 6, "ln": 9, "emb": 11, "lstm": 12, "fc": 13, "mha": 8,
                         "mha.out_proj": 8}
    r = widths(pk.models.create("resnet20"))
    assert r["conv1"] == 16 and r["layer2.0.shortcut.0"] == 32 and r["layer3.2.bn2"] == 64 and r["fc"] == 10
