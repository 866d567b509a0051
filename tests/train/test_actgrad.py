"""Stochastic activation-gradient pruning (Ye et al. ECCV 2020): the rule, its threshold and the hooks."""
import math

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.train.actgrad import ActivationGradientPruning, gradient_threshold, prune_activation_gradient


def _draws(g, tau, n, seed=0):
    """``n`` independent prunings of ``g`` at once: ``[n, *g.shape]``."""
    return prune_activation_gradient(g.expand(n, *g.shape).contiguous(), tau=tau,
                                     generator=torch.Generator().manual_seed(seed))


def test_monte_carlo_mean_equals_the_dense_gradient_within_two_percent():
    g = torch.randn(500, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tau = gradient_threshold(g, 0.9)
    draws = _draws(g, tau, 10000)
    assert float((draws == 0).double().mean()) > 0.4  # the draws really are sparse
    rel = float((draws.mean(0) - g).norm() / g.norm())
    assert rel < 0.02, rel  # unbiased: measured 0.0064 (seed 0; 54% of the drawn entries are zero)
    biased = torch.where(g.abs() >= tau, g, torch.zeros_like(g))  # plain dropping of the small entries
    assert float((biased - g).norm() / g.norm()) > 0.5  # measured 0.77: what the stochastic rounding corrects


def test_entries_are_kept_zeroed_or_set_to_plus_minus_tau():
    g = torch.tensor([3.0, -2.0, 0.5, -0.25, 0.0])
    draws = _draws(g, 1.0, 4000)
    assert (draws[:, 0] == 3.0).all() and (draws[:, 1] == -2.0).all() and (draws[:, 4] == 0).all()
    assert set(draws[:, 2].unique().tolist()) == {0.0, 1.0} and set(draws[:, 3].unique().tolist()) == {-1.0, 0.0}
    # P(+tau) = |g| / tau: 0.5 and 0.25
    assert abs(float((draws[:, 2] == 1).double().mean()) - 0.5) < 0.03
    assert abs(float((draws[:, 3] == -1).double().mean()) - 0.25) < 0.03


def test_threshold_puts_fraction_p_below_it_for_a_normal_tensor_and_counts_existing_zeros():
    g = torch.randn(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for p in (0.5, 0.9, 0.99):
        tau = gradient_threshold(g, p)
        assert abs(float((g.abs() < tau).double().mean()) - p) < 0.005
    # half the entries exactly zero (a ReLU's gradient): tau puts 80% of the non-zero ones below it for p = 0.9
    half = torch.where(torch.arange(g.numel()) % 2 == 0, g, torch.zeros_like(g))
    assert abs(float((half.abs() < gradient_threshold(half, 0.9)).double().mean()) - 0.9) < 0.005
    assert gradient_threshold(half, 0.4) == 0.0 and gradient_threshold(torch.zeros(4), 0.9) == 0.0
    assert math.isclose(gradient_threshold(g, 0.9), 1.6449 * float(g.abs().mean()) * math.sqrt(math.pi / 2), rel_tol=1e-3)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(16, 2))


def test_hook_prunes_the_output_gradient_before_the_weight_gradient():
    x = torch.randn(8, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    ref = _net()
    out = ref[2](ref[1](ref[0](x)))
    out.retain_grad()
    ref[4](ref[3](out)).sum().backward()
    cb = ActivationGradientPruning(net := _net(), 0.9, layers=["2"], seed=3)
    net(x).sum().backward()
    # the weight gradient of conv 2 is the one of its pruned output gradient, drawn with the same generator
    pruned = prune_activation_gradient(out.grad, 0.9, generator=torch.Generator().manual_seed(3))
    w_grad = torch.nn.grad.conv2d_weight(ref[1](ref[0](x)), ref[2].weight.shape, pruned)
    torch.testing.assert_close(net[2].weight.grad, w_grad)
    s = cb.stats()["2"]
    assert s["zero_fraction"] == float((pruned == 0).double().mean()) and s["pruned_fraction"] > 0
    cb.remove()
    net.zero_grad()
    net(x).sum().backward()
    torch.testing.assert_close(net[2].weight.grad, ref[2].weight.grad)  # removed: dense back-prop again


def test_eval_and_no_grad_forwards_are_untouched_and_bad_arguments_refused():
    net = _net()
    cb = ActivationGradientPruning(net, 0.9)
    net.eval()
    net(torch.randn(2, 1, 6, 6)).sum().backward()
    assert cb.counts["0"][0] == 0
    with pytest.raises(ConfigError, match=r"p=1.0: .* must be in \[0, 1\)"):
        ActivationGradientPruning(net, 1.0)
    with pytest.raises(ConfigError, match=r"layers=\['nope'\].*'nope' is not one"):
        ActivationGradientPruning(net, 0.9, layers=["nope"])
