import numpy as np
import pytest

from prunekit.allocate import (allocate_global, allocate_uniform, kept_width, parse_target, search_target,
                               select_removal)
from prunekit.errors import ConfigError


def test_kept_width_rounding_and_minimum():
    assert kept_width(64, 0.5) == 32
    assert kept_width(64, 0.3, round_to=8) == 48  # 64 - 19 = 45 -> 48
    assert kept_width(10, 0.0, round_to=4) == 10
    assert kept_width(5, 0.99, min_channels=2) == 2
    assert allocate_uniform([8, 12], [0.5, 0.25]) == [4, 9]


def test_global_uses_normalised_scores():
    # group 0 scores are large in absolute terms but their spread is the same once normalised
    a = np.array([100.0, 200.0, 300.0, 400.0])
    b = np.array([1.0, 2.0, 30.0, 40.0])
    kept = allocate_global([a, b], 0.25)
    assert kept == [4, 2]  # b's two small channels are the weakest after normalisation
    removal = select_removal([a, b], kept)
    assert list(removal) == [1] and removal[1].tolist() == [0, 1]
    assert allocate_global([a, b], 0.25, fixed={1: 4}) == [3, 4]  # 25% of the free group only


def test_parse_target_and_search():
    assert parse_target("macs=0.5") == ("macs", 0.5)
    assert parse_target("params=0.25") == ("params", 0.25)
    with pytest.raises(ConfigError, match="did you mean 'params'"):
        parse_target("param=0.5")
    cost = lambda s: int(1000 * (1 - s))  # noqa: E731
    s = search_target(cost, 400)
    assert cost(s) <= 400 and s < 0.61
    with pytest.raises(ConfigError, match="cannot be reached"):
        search_target(lambda s: 900, 400)
