"""The Pareto front and the partial-order search (POP's cut) on hand-sized cases."""
import itertools
import math

import numpy as np
import pytest

from prunekit.allocate.pareto import accuracy_bounds, dominates, pareto_front, partial_order_search, precedes
from prunekit.errors import ConfigError


def test_pareto_front_by_hand_keeps_the_undominated_points_fastest_first():
    # (cost, score): (3, .9) front; (2.5, .84) beaten by (2, .85); (1, .8) front; (2, .85) front
    assert pareto_front([3.0, 2.5, 1.0, 2.0], [0.90, 0.84, 0.80, 0.85]) == [2, 3, 0]
    assert pareto_front([1.0, 1.0], [0.5, 0.5]) == [0, 1]  # identical points: neither dominates
    assert pareto_front([1.0, 1.0], [0.5, 0.6]) == [1]  # same cost, higher score wins
    assert dominates((1, 0.9), (1, 0.8)) and not dominates((1, 0.9), (0.5, 0.8))


def test_pareto_front_refuses_nan_and_mismatched_lengths():
    with pytest.raises(ConfigError, match="NaN"):
        pareto_front([1.0, float("nan")], [0.1, 0.2])
    with pytest.raises(ConfigError, match="costs has 2 entries and scores 1"):
        pareto_front([1.0, 2.0], [0.1])


def test_accuracy_bounds_come_from_the_trained_candidates_below_and_above():
    cfg = [(8, 2), (16, 2), (8, 3), (16, 3)]
    lo, hi = accuracy_bounds(cfg, {0: 0.8, 3: 0.9})
    assert lo == [0.8, 0.8, 0.8, 0.9] and hi == [0.8, 0.9, 0.9, 0.9]  # a trained one bounds itself
    lo, hi = accuracy_bounds(cfg, {1: 0.85})
    assert lo[2] == -math.inf and hi[0] == 0.85 and hi[2] == math.inf  # (8,3) and (16,2) are not ordered
    assert precedes((8, 2), (8, 3)) and not precedes((16, 2), (8, 3))


def test_a_narrow_deep_candidate_is_cut_when_a_faster_one_beats_its_upper_bound():
    # (8,4) trained at .83 bounds (8,3) from above; (16,2) is faster than (8,3) and scores .86 >= .83: cut
    cfg, acc = [(8, 2), (16, 2), (8, 3), (8, 4)], [0.80, 0.86, 0.82, 0.83]
    trained = []
    r = partial_order_search(cfg, [1.0, 1.5, 2.0, 2.5], lambda i: trained.append(i) or acc[i])
    assert trained == [0, 3, 1] and 2 not in trained
    assert r.cut == {2: {"by": 1, "bound": 0.83}} and r.front == [0, 1] and r.saved == 0.25
    ex = partial_order_search(cfg, [1.0, 1.5, 2.0, 2.5], acc.__getitem__, order="exhaustive")
    assert sorted(ex.trained) == [0, 1, 2, 3] and ex.front == r.front


def test_no_cut_when_the_bound_is_not_beaten():
    # (16,2) at .82 is below (8,4)'s .83: (8,3) might score up to .83 and beat it, so it is trained
    cfg, acc = [(8, 2), (16, 2), (8, 3), (8, 4)], [0.80, 0.82, 0.825, 0.83]
    r = partial_order_search(cfg, [1.0, 1.5, 2.0, 2.5], acc.__getitem__)
    assert r.cut == {} and sorted(r.trained) == [0, 1, 2, 3] and r.front == [0, 1, 2, 3]


def _grid(seed):
    rng = np.random.default_rng(seed)
    cfg = list(itertools.product([8, 16, 32], [2, 4], [8, 16, 32], [2, 4]))  # two stages, 36 candidates
    bw, bd = rng.uniform(0.003, 0.03, 2), rng.uniform(0.0, 0.01, 2)
    acc = [0.9 - sum(bw[s] * math.log2(32 / c[2 * s]) + bd[s] * (4 - c[2 * s + 1]) for s in range(2)) for c in cfg]
    lat = [sum(c[2 * s + 1] * (0.05 + (c[2 * s] / 32) ** 2 * (1 if s == 0 else 0.5)) for s in range(2))
           + rng.uniform(0, 0.01) for c in cfg]
    return cfg, acc, lat


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_when_the_partial_order_holds_the_front_is_exhaustive_searchs_and_some_candidates_are_cut(seed):
    cfg, acc, lat = _grid(seed)  # accuracy grows with every width and depth: the assumption holds exactly
    r = partial_order_search(cfg, lat, acc.__getitem__)
    assert sorted(r.front) == sorted(pareto_front(lat, acc))
    assert r.violations == [] and len(r.trained) + len(r.cut) == len(cfg)
    assert len(r.cut) >= 1 and all(i not in r.trained for i in r.cut)


def test_fastest_first_order_cuts_nothing():
    cfg, acc, lat = _grid(0)  # a bound needs a larger trained candidate, which is slower: none when fastest first
    r = partial_order_search(cfg, lat, acc.__getitem__, order="latency")
    assert r.cut == {} and len(r.trained) == len(cfg)


def test_a_violated_assumption_is_reported():
    r = partial_order_search([(1,), (2,)], [1.0, 2.0], [0.9, 0.8].__getitem__)
    assert r.violations == [(0, 1)] and r.front == [0]


def test_bad_order_and_shapes_are_refused():
    with pytest.raises(ConfigError, match="order='random' is not valid"):
        partial_order_search([(1,)], [1.0], lambda i: 0.0, order="random")
    with pytest.raises(ConfigError, match="configs has 2 candidates and latency 1"):
        partial_order_search([(1,), (2,)], [1.0], lambda i: 0.0)
