"""The resource barrier (BAR's budget term) and the progressive budget, by hand."""
import math

import pytest
import torch

from prunekit.errors import ConfigError
from prunekit.train.barrier import log_barrier, progressive_budget


def _grad(v: float, budget: float) -> float:
    x = torch.tensor(v, dtype=torch.float64, requires_grad=True)
    log_barrier(x, budget).backward()
    return float(x.grad)


def test_the_barrier_is_minus_log_of_the_slack_and_its_gradient_grows_as_the_budget_is_approached():
    assert float(log_barrier(torch.tensor(0.0), 4.0)) == 0.0
    assert float(log_barrier(torch.tensor(3.0), 4.0)) == pytest.approx(math.log(4.0))
    grads = [_grad(v, 1.0) for v in (0.0, 0.5, 0.9, 0.98)]
    assert grads == pytest.approx([1.0, 2.0, 10.0, 50.0])  # 1 / (b - v)
    assert grads == sorted(grads)


def test_beyond_the_knee_the_barrier_is_its_finite_tangent_line():
    knee = 0.99
    at = float(log_barrier(torch.tensor(knee, dtype=torch.float64), 1.0))
    assert at == pytest.approx(-math.log(0.01))
    assert float(log_barrier(torch.tensor(1.5, dtype=torch.float64), 1.0)) == pytest.approx(at + 100 * (1.5 - knee))
    assert _grad(3.0, 1.0) == pytest.approx(100.0)  # the slope at the knee, not NaN or inf


def test_the_progressive_budget_falls_smoothly_then_stays_at_the_end():
    vals = [progressive_budget(s, 100, 1.0, 0.25, ramp=0.5) for s in range(0, 101, 10)]
    assert vals[0] == 1.0 and vals[5:] == [0.25] * 6
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    assert progressive_budget(25, 100, 1.0, 0.25, ramp=0.5) == pytest.approx(0.625)  # the S-curve's midpoint


def test_a_non_positive_budget_is_refused():
    with pytest.raises(ConfigError, match="budget=0"):
        log_barrier(torch.tensor(1.0), 0)
