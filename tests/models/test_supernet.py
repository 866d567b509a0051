"""The choice layer's mixture and op pruning, and the op MAC count, by hand."""
import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.models.supernet import ChoiceLayer, SuperNet, op_macs


class Scale(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.s, self.calls = s, 0

    def forward(self, x):
        self.calls += 1
        return self.s * x


def test_choice_layer_mixes_alive_ops_by_softmax_and_never_runs_a_dropped_one():
    ops = [Scale(1.0), Scale(2.0), Scale(4.0)]
    layer = ChoiceLayer(ops)
    with torch.no_grad():
        layer.alpha.copy_(torch.tensor([0.0, 0.0, 1.0]))
    x = torch.ones(2)
    e = torch.exp(torch.tensor(1.0))
    assert torch.allclose(layer(x), x * (1 + 2 + 4 * e) / (2 + e))
    layer.keep_([0, 1])
    assert torch.allclose(layer(x), x * 1.5) and ops[2].calls == 1
    assert layer.probabilities().tolist() == [0.5, 0.5, 0.0]
    with pytest.raises(ConfigError, match="give at least one index"):
        layer.keep_([])


def test_op_macs_by_hand():
    net = SuperNet((2, 2, 2), ops=("conv3x3", "pool1x1"), num_classes=3)
    macs = op_macs(net, torch.zeros(1, 1, 4, 4))
    # layer 0 at 4x4: conv3x3 1->2: 16*2*9 = 288; pool+1x1 1->2: 16*2 = 32; layer 1 (stride 2, 2x2): 4*2*2*9 = 144
    assert macs[0] == [288, 32] and macs[1] == [144, 4 * 2 * 2]
