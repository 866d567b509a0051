import math

import pytest

from prunekit.allocate import bisect_decreasing
from prunekit.errors import ConfigError


def test_log_scale_bisection_finds_the_smallest_knob_within_budget():
    cost = lambda e: math.ceil(1000 / e)  # noqa: E731  falls as e grows
    e = bisect_decreasing(cost, 10, 1e-300, 1e150, log=True, steps=200)
    assert cost(e) <= 10 and cost(e * 0.999) > 10
    assert bisect_decreasing(cost, 10 ** 9, 1.0, 10.0) == 1.0  # already within budget at lo


def test_unreachable_budget_and_bad_bounds_are_refused():
    with pytest.raises(ConfigError, match="cannot be reached"):
        bisect_decreasing(lambda e: 5, 1, 1.0, 2.0)
    with pytest.raises(ConfigError, match="lo=0"):
        bisect_decreasing(lambda e: 5, 1, 0, 2.0, log=True)
