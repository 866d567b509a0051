import numpy as np
import torch
from torch import nn

import prunekit as pk
from prunekit.criteria import ChannelView, get_criterion, score_member


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.bn(self.conv1(x))))


def test_bn_scale_scores_gammas_and_neutral_elsewhere():
    bn = nn.BatchNorm2d(3)
    bn.weight.data = torch.tensor([0.5, -2.0, 1.0])
    v = ChannelView("bn.weight", 0, "producer", np.arange(3), bn.weight.detach()[:, None], module=bn)
    np.testing.assert_allclose(score_member(get_criterion("bn-scale"), v), [0.5, 2.0, 1.0])
    conv = nn.Conv2d(1, 3, 1)
    v = ChannelView("conv.weight", 0, "producer", np.arange(3), conv.weight.detach().reshape(3, -1), module=conv)
    np.testing.assert_allclose(score_member(get_criterion("bn-scale"), v), [1.0, 1.0, 1.0])


def test_bn_scale_oracle_differs_from_magnitude():
    # channel 0 has the largest filter but the smallest |gamma|; channel 1 the smallest filter
    m = ConvBN()
    with torch.no_grad():
        m.conv1.weight.copy_(torch.tensor([5.0, 0.1, 1.0]).view(3, 1, 1, 1).expand(3, 1, 3, 3))
        m.bn.weight.copy_(torch.tensor([0.01, 1.0, 0.5]))
    x = torch.randn(1, 1, 6, 6)
    by_bn = pk.plan(m, x, sparsity=1 / 3 + 1e-6, criterion="bn-scale").groups
    by_l1 = pk.plan(m, x, sparsity=1 / 3 + 1e-6, criterion="l1", reduce="producer").groups
    removed = {g.name: g.channels for g in by_bn if g.channels}
    assert list(removed.values()) == [[0]]
    assert [g.channels for g in by_l1 if g.channels] == [[1]]
