import numpy as np
import torch

from prunekit.criteria import ChannelView, get_criterion, score_member, select_lowest


def _view(w):
    return ChannelView("conv.weight", 0, "producer", np.arange(w.shape[0]), w)


def test_fpgm_oracle_removes_the_median_filter_not_the_smallest():
    # three filters clustered around (10.7, 10.7) and one small outlier d = (1, 0)
    w = torch.tensor([[10.0, 10.0], [12.0, 10.0], [10.0, 12.0], [1.0, 0.0]])
    s = score_member(get_criterion("fpgm"), _view(w))
    r = np.sqrt
    expected = [2 + 2 + r(81 + 100), 2 + r(8) + r(121 + 100), 2 + r(8) + r(81 + 144),
                r(81 + 100) + r(121 + 100) + r(81 + 144)]
    np.testing.assert_allclose(s, expected)
    assert select_lowest(s, 1).tolist() == [0]  # the filter nearest the others
    assert select_lowest(score_member(get_criterion("l2"), _view(w)), 1).tolist() == [3]


def test_fpgm_planted_mean_and_duplicate():
    # entry check (a): filter 0 is the mean of the others, filters 3 and 4 are identical
    g = torch.Generator().manual_seed(0)
    rest = torch.randn(5, 9, generator=g) * 3
    rest[3] = rest[2] + 0.0
    w = torch.cat([rest.mean(0, keepdim=True), rest])
    s = score_member(get_criterion("fpgm"), _view(w))
    order = np.argsort(s, kind="stable")
    assert order[0] == 0 and set(order[1:3].tolist()) & {3, 4}
