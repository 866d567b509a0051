import numpy as np
import torch
from torch import nn

from prunekit.criteria.reconstruction import (lasso_fista, lasso_path_scores, least_squares_refit_, record_io,
                                              thinet_order)


def test_thinet_oracle_keeps_cancelling_pair_not_largest():
    # columns = per-channel contributions to two sampled outputs
    z = torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.9]])
    # by hand: step 1 picks c2 (||c2||^2 = 0.25); with r = (0, .5): c0 -> 1, c1 -> 1, c3 -> 1.71: c0;
    # with r = (1, .5): c1 -> -1, c3 -> 1.71: c1; c3 last
    assert thinet_order(z).tolist() == [2, 0, 1, 3]
    err = lambda removed: float(z[:, removed].sum(1).pow(2).sum())  # noqa: E731
    norm_order = torch.argsort(z.norm(dim=0)).tolist()
    assert norm_order[:2] == [2, 3]  # magnitude would remove c2 and c3 ...
    assert err([2, 0]) == 1.25 and abs(err([2, 3]) - 1.96) < 1e-6  # ... which changes the next layer more


def test_lasso_oracle_keeps_the_correlated_small_channel():
    # y = sum of columns = (1.6, 1.6, 0); c2 has the smallest norm but the largest correlation with y
    z = torch.tensor([[1.0, 0.0, 0.6], [0.0, 1.0, 0.6], [0.0, 0.0, 0.0]])
    y = z.sum(1)
    corr = z.t() @ y / 3
    np.testing.assert_allclose(corr.numpy(), [1.6 / 3, 1.6 / 3, 1.92 / 3], rtol=1e-6)
    beta = lasso_fista(z.t() @ z / 3, corr, 0.9 * 1.92 / 3, torch.zeros(3, dtype=torch.float32))
    assert (beta != 0).tolist() == [False, False, True]  # just below lambda_max only c2 is active
    s = lasso_path_scores(z)
    assert int(torch.argmax(s)) == 2 and int(torch.argmin(z.norm(dim=0))) == 2


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x)))


def test_full_refit_recovers_planted_weights():
    torch.manual_seed(0)
    m = TwoLayer()
    calib = [(torch.randn(6, 2, 6, 6), None)]
    targets = record_io(m, calib, ["conv2"])
    w0 = m.conv2.weight.detach().clone()
    with torch.no_grad():
        m.conv2.weight.mul_(0.3).add_(0.05)
    err = least_squares_refit_(m, calib, targets, mode="full", n_samples=600)
    assert err["conv2"]["mse_after"] < 1e-5 < err["conv2"]["mse_before"]  # small ridge: near-exact
    torch.testing.assert_close(m.conv2.weight.detach(), w0, atol=2e-3, rtol=2e-3)


def test_scale_refit_recovers_per_channel_factors_and_bad_mode_changes_nothing():
    torch.manual_seed(1)
    m = TwoLayer()
    calib = [(torch.randn(6, 2, 6, 6), None)]
    targets = record_io(m, calib, ["conv2"])
    w0 = m.conv2.weight.detach().clone()
    with torch.no_grad():
        m.conv2.weight.mul_(torch.tensor([0.5, 2.0, 1.0, 3.0]).view(1, 4, 1, 1))
    import pytest

    from prunekit.errors import ConfigError

    before = m.conv2.weight.detach().clone()
    with pytest.raises(ConfigError, match="mode='lsq'.*'full'"):
        least_squares_refit_(m, calib, targets, mode="lsq")
    assert torch.equal(m.conv2.weight, before)
    least_squares_refit_(m, calib, targets, mode="scale", n_samples=600)
    torch.testing.assert_close(m.conv2.weight.detach(), w0, atol=1e-4, rtol=1e-4)
