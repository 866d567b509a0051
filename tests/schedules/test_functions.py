from functools import partial

import pytest

from prunekit.errors import ConfigError
from prunekit.schedules import (agp_cubic, at_init, dns_update_probability, geometric_rounds, iterative,
                                lr_rewind_factor, one_shot)


def test_agp_endpoints_monotone_and_shrinking_increments():
    f = partial(agp_cubic, final=0.9, start=100, n=12, frequency=50, initial=0.05)
    values = [f(t) for t in range(0, 1200)]
    assert f(0) == 0.05 and f(100) == pytest.approx(0.05) and f(100 + 12 * 50) == pytest.approx(0.9)
    assert f(5000) == pytest.approx(0.9)
    assert all(b >= a for a, b in zip(values, values[1:]))
    grid = [f(100 + k * 50) for k in range(13)]
    incs = [b - a for a, b in zip(grid, grid[1:])]
    assert all(b <= a + 1e-12 for a, b in zip(incs, incs[1:]))
    # held constant between grid points
    assert f(149) == f(100) and f(151) == f(150)
    # the cubic formula at an interior point
    assert f(100 + 4 * 50) == pytest.approx(0.9 + (0.05 - 0.9) * (1 - 4 / 12) ** 3)


def test_geometric_and_iterative_rounds():
    assert geometric_rounds(0.2, 10)[-1] == pytest.approx(1 - 0.8 ** 10)
    assert [iterative(s, final=0.91, rounds=2, steps_per_round=10) for s in (0, 9, 10)] == pytest.approx(
        [0.7, 0.7, 0.91])


def test_one_shot_at_init_and_dns_probability():
    assert one_shot(4, sparsity=0.5, at=5) == 0.0 and one_shot(5, sparsity=0.5, at=5) == 0.5
    assert at_init(0, sparsity=0.9) == 0.9
    assert dns_update_probability(30000, gamma=1e-4, power=1) == pytest.approx(0.25)
    assert dns_update_probability(14000, stop=14000) == 0.0


def test_lr_rewind_replays_exactly_the_tail_of_the_schedule():
    def step_lr(s, T):  # 0.1 until 2/3 of training, then 0.01
        return 0.1 if s < 2 * T // 3 else 0.01
    T, t = 60, 30
    replay = [lr_rewind_factor(s, lr_factor=step_lr, total_steps=T, retrain_steps=t) for s in range(t)]
    assert replay == [step_lr(s, T) for s in range(T - t, T)]


@pytest.mark.parametrize("call,match", [
    (lambda: agp_cubic(0, final=1.0, start=0, n=1, frequency=1), r"final=1.0 must be a float in \[0, 1\)"),
    (lambda: agp_cubic(0, final=0.5, start=0, n=0, frequency=1), r"n=0 must be an int >= 1"),
    (lambda: agp_cubic(0, final=0.5, initial=0.6, start=0, n=2, frequency=1), "AGP only increases"),
    (lambda: geometric_rounds(-0.2, 3), r"rate=-0.2 must be a float"),
    (lambda: lr_rewind_factor(0, lr_factor=lambda s, T: 1, total_steps=5, retrain_steps=6), "retrain_steps=6 > total"),
])
def test_bad_schedule_arguments(call, match):
    with pytest.raises(ConfigError, match=match):
        call()
