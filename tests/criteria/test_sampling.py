"""Filter sensitivity sampling with importance weights (PFP's building blocks, issue 19)."""
import math

import pytest
import torch
from torch import nn

from prunekit.allocate import bisect_decreasing
from prunekit.criteria.sampling import (draws_for_unique, empirical_sensitivity, expected_unique, importance_weights,
                                        log_term, sample_complexity, sample_until_unique, sampling_probabilities)
from prunekit.errors import ConfigError


def _linear(w):
    lin = nn.Linear(len(w[0]), len(w), bias=True)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(w))
        lin.bias.fill_(5.0)  # the bias takes no share
    return lin


def test_sensitivity_and_probabilities_by_hand():
    """W = [[1, 1, 2], [0, 1, 1]], inputs x1 = (1, 2, 1), x2 = (2, 1, 0). Shares w_ij a_j / sum_k w_ik a_k:
    unit 0: x1 (1, 2, 2)/5, x2 (2, 1, 0)/3; unit 1: x1 (0, 2, 1)/3, x2 (0, 1, 0)/1. Max per channel:
    s = (2/3, 1, 2/5); p = s / (31/15) = (10, 15, 6) / 31."""
    s, positions = empirical_sensitivity(_linear([[1.0, 1.0, 2.0], [0.0, 1.0, 1.0]]),
                                         torch.tensor([[1.0, 2.0, 1.0], [2.0, 1.0, 0.0]]))
    assert positions == 1
    torch.testing.assert_close(s, torch.tensor([2 / 3, 1.0, 0.4], dtype=torch.float64))
    torch.testing.assert_close(sampling_probabilities(s), torch.tensor([10, 15, 6], dtype=torch.float64) / 31)


def test_negative_weights_take_their_share_of_the_negative_part():
    """Unit weights (-1, -3, 2) on x = (1, 2, 1): positive part: channel 2 alone, share 1; negative part:
    |w| a = (1, 6, 0) over 7. s = (1/7, 6/7, 1)."""
    s, _ = empirical_sensitivity(_linear([[-1.0, -3.0, 2.0]]), torch.tensor([[1.0, 2.0, 1.0]]))
    torch.testing.assert_close(s, torch.tensor([1 / 7, 6 / 7, 1.0], dtype=torch.float64))


def test_vectorised_sensitivity_equals_the_loop_over_every_unit_position_and_tap():
    """Slow reference: the authors' order of reductions, written as plain loops over inputs, units, positions."""
    torch.manual_seed(3)
    conv = nn.Conv2d(3, 4, 2, stride=1, bias=False)
    x = torch.randn(3, 3, 4, 4)  # signed inputs: the negative part counts as a second input
    a = torch.nn.functional.unfold(x, 2).double()  # [n, C*k, L]
    w = conv.weight.detach().double().reshape(4, -1)
    ref = torch.zeros(3, dtype=torch.float64)
    for piece in (a.clamp_min(0), -a.clamp_max(0)):
        for n in range(piece.shape[0]):
            for i in range(4):
                for wp in (w[i].clamp_min(0), -w[i].clamp_max(0)):
                    for pos in range(piece.shape[2]):
                        z = float(wp @ piece[n, :, pos])
                        if abs(z) <= torch.finfo(torch.float32).eps:
                            continue
                        share = (wp * piece[n, :, pos] / z).view(3, 4).amax(1)
                        ref = torch.maximum(ref, share)
    s, _ = empirical_sensitivity(conv, x)
    torch.testing.assert_close(s, ref, rtol=1e-5, atol=1e-6)


def test_a_channel_with_always_zero_activations_has_sensitivity_zero_and_is_never_sampled():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 5, 3, padding=1)
    x = torch.relu(torch.randn(16, 4, 6, 6))
    x[:, 2] = 0.0
    s, positions = empirical_sensitivity(conv, [x[:8], x[8:]])
    assert positions == 36 and s[2] == 0 and bool((s[[0, 1, 3]] > 0).all())
    p = sampling_probabilities(s)
    counts, m = sample_until_unique(p, 4, torch.Generator().manual_seed(0))  # 4 asked, 3 can be drawn
    assert counts[2] == 0 and int((counts > 0).sum()) == 3 and int(counts.sum()) == m
    big = torch.multinomial(p, 100_000, replacement=True, generator=torch.Generator().manual_seed(1))
    assert not bool((big == 2).any())


def test_sampling_frequencies_follow_the_sensitivities():
    s = torch.tensor([0.1, 0.5, 0.4, 1.0], dtype=torch.float64)
    p = sampling_probabilities(s)
    counts, m = sample_until_unique(p, 4, torch.Generator().manual_seed(0))
    total = torch.zeros(4, dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    for _ in range(300):
        c, _ = sample_until_unique(p, 4, gen)
        total += c.double()
    freq = total / total.sum()
    assert torch.allclose(freq, s / s.sum(), atol=0.02), freq


def test_importance_weights_make_the_sampled_sum_unbiased():
    g = torch.Generator().manual_seed(0)
    z = torch.rand(30, generator=g, dtype=torch.float64) * torch.logspace(-1, 1, 30, dtype=torch.float64)
    p = sampling_probabilities(z)
    est = []
    for _ in range(3000):
        counts = torch.bincount(torch.multinomial(p, 10, replacement=True, generator=g), minlength=30)
        est.append(float((importance_weights(counts, 10, p) * z).sum()))
    assert sum(est) / len(est) == pytest.approx(float(z.sum()), rel=0.01)


def test_sample_size_arithmetic_by_hand():
    assert sample_complexity(1.0, 2.0) == 48  # ceil(3 * (6 + 2) * 2 / 1)
    assert sample_complexity(0.5, 1.0) == 84  # ceil(3 * 7 * 1 / 0.25)
    assert sample_complexity(1e-300, 1.0) == 2 ** 62 and sample_complexity(1e150, 1.0) == 1
    p = torch.tensor([0.5, 0.5], dtype=torch.float64)
    assert expected_unique(p, 1) == 1 and expected_unique(p, 2) == 2  # 2 (1 - 0.5^2) = 1.5 -> 2
    assert draws_for_unique(p, 2) == 2 and draws_for_unique(torch.tensor([1.0, 0.0]), 2) == 1
    assert log_term(15, 9, 1e-16, 3.0) == pytest.approx(6 * math.log(8 * 16 * 9 / 1e-16))
    with pytest.raises(ConfigError, match="delta=1.5"):
        log_term(1, 1, 1.5)
    with pytest.raises(ConfigError, match="Conv2d with groups=1"):
        empirical_sensitivity(nn.Conv2d(4, 4, 3, groups=4), torch.zeros(1, 4, 5, 5))


def test_at_the_bisected_eps_the_sampled_layer_meets_its_bound_which_is_loose():
    """Entry check (b): a layer with non-negative weights and inputs; eps found by bisection so that the
    expected number of distinct channels is half the width (authors' delta = 1e-16, c = 3), then m draws for
    that eps; the re-weighted output of every unit is within eps of the full output for >= 90% of held-out
    inputs. Calibration run: eps = 203 (m = 31 draws, 21 of 40 channels), every output within it, the largest
    relative error 0.76 -- the bound holds but at this width it is far from tight (eps >> 1)."""
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(40, 8, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.rand(8, 40, generator=g) * torch.logspace(-1, 0, 40))
    train, held = torch.rand(256, 40, generator=g), torch.rand(200, 40, generator=g)
    s, positions = empirical_sensitivity(lin, train)
    p = sampling_probabilities(s)
    coeff = float(s.sum()) * log_term(positions, 1, 1e-16, 3.0)
    eps = bisect_decreasing(lambda e: expected_unique(p, sample_complexity(e, coeff)), 20, 1e-6, 1e6, log=True)
    m = sample_complexity(eps, coeff)
    counts = torch.bincount(torch.multinomial(p, m, replacement=True, generator=g), minlength=40)
    gamma = importance_weights(counts, m, p).float()
    with torch.no_grad():
        full, approx = held @ lin.weight.T, held @ (lin.weight * gamma).T
    ok = ((approx - full).abs() <= eps * full.abs()).float().mean()
    assert ok >= 0.9 and int((counts > 0).sum()) < 40  # the bound holds and channels were dropped
    assert eps > 10 and float(((approx - full).abs() / full.abs()).max()) < 1.0  # loose: the error is far below eps
