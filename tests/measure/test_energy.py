"""The proxy energy model of energy-aware pruning (prunekit.measure.energy), checked by hand."""
import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.measure import count_macs
from prunekit.measure.energy import EnergyModel, energy, layer_energy


def test_linear_layer_energy_matches_the_hand_count():
    lin = nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.weight[0, :2] = 0.0  # 2 of 12 weights zero: density 10/12
    em = EnergyModel(index_bits=16)  # a sparse weight would cost 2 words per value: dense storage is smaller
    e = layer_energy(nn.Sequential(lin), torch.zeros(2, 4), em)["0"]
    nz = 12 * 10 / 12
    assert (e.macs, e.ifmap, e.ofmap, e.weight_words) == (12, 4, 3, 12.0)
    assert e.compute == pytest.approx(nz * 1.0)
    assert e.data == pytest.approx(nz * 3 * 1.0 + (4 + 3) * 2.0 + (12 + 4 + 3) * (6.0 + 200.0))


def test_sparse_weights_cost_less_data_and_compute():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 5))
    x = torch.zeros(1, 1, 8, 8)
    dense = layer_energy(m, x)
    with torch.no_grad():
        m[3].weight[:, ::2] = 0.0  # half of the linear layer's weights
    sparse = layer_energy(m, x)
    assert sparse["0"].total == dense["0"].total  # the untouched layer costs the same
    assert sparse["3"].compute == pytest.approx(dense["3"].compute / 2)
    words = 4 * 36 * 5 / 2 * (16 + 4) / 16  # values + a 4-bit index each
    assert sparse["3"].weight_words == pytest.approx(words) and sparse["3"].data < dense["3"].data


def test_macs_agree_with_the_mac_counter_and_energy_is_the_sum():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2), nn.Flatten(),
                      nn.Linear(6 * 9, 3))
    x = torch.zeros(3, 1, 8, 8)  # per example: the batch size does not matter
    per = layer_energy(m, x)
    counted = count_macs(m, x[:1]).per_module
    assert {k: v.macs for k, v in per.items()} == {k: counted[k] for k in per}
    assert energy(m, x) == pytest.approx(sum(e.total for e in per.values()))


def test_a_bad_cost_is_refused():
    with pytest.raises(ConfigError, match="dram=-1"):
        EnergyModel(dram=-1)
    with pytest.raises(ConfigError, match="no Conv or Linear"):
        layer_energy(nn.Sequential(nn.ReLU()), torch.zeros(1, 3))
