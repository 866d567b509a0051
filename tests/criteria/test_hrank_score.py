import numpy as np
import torch

from prunekit.criteria.hrank import average_rank


def test_average_rank_by_hand():
    eye = torch.eye(3)
    const = torch.full((3, 3), 7.0)
    maps = torch.stack([torch.stack([const, eye]), torch.stack([const, eye[:, [1, 0, 2]] * 0 + eye])])  # [2,2,3,3]
    maps[1, 1, 2, 2] = 0  # second image, channel 1: rank 2
    np.testing.assert_allclose(average_rank(maps).numpy(), [1.0, 2.5])


def test_hrank_oracle_low_rank_large_map_goes_first():
    # channel 0: a large constant map (rank 1, largest mean); channel 1: a small full-rank map
    g = torch.Generator().manual_seed(0)
    maps = torch.stack([torch.full((4, 4, 4), 5.0), torch.rand(4, 4, 4, generator=g) * 0.1], 1)  # [4, 2, 4, 4]
    assert average_rank(maps).tolist() == [1.0, 4.0]
    assert maps[:, 0].mean() > maps[:, 1].mean()  # mean-activation would keep channel 0


def test_hrank_criterion_uses_reader_inputs():
    from torch import nn

    from prunekit.api import build_graph, score_groups

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 2, 1)
            self.conv2 = nn.Conv2d(2, 1, 1)

        def forward(self, x):
            return self.conv2(self.conv1(x))

    m = M()
    with torch.no_grad():
        m.conv1.weight.copy_(torch.tensor([0.0, 1.0]).view(2, 1, 1, 1))
        m.conv1.bias.copy_(torch.tensor([3.0, 0.0]))  # channel 0: constant 3 -> rank 1
    x = torch.randn(3, 1, 4, 4)
    (s,) = score_groups(m, build_graph(m, x), "hrank", calib=[(x, None)])
    np.testing.assert_allclose(s, np.array([1.0, 4.0]) / 2.5)
