from functools import partial

import pytest

from prunekit.errors import ConfigError
from prunekit.schedules import agp_cubic, at_init, dns_update_probability, geometric_rounds, lr_rewind_factor, one_shot


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


def test_geometric_rounds_by_count_and_by_rate_land_on_the_target():
    assert geometric_rounds(0.91, rounds=2) == pytest.approx([0.7, 0.91])
    by_rate = geometric_rounds(1 - 0.8 ** 10, rate=0.2)
    assert len(by_rate) == 10 and by_rate == pytest.approx([1 - 0.8 ** (r + 1) for r in range(10)])
    # 0.9 at 20% per round: ten whole rounds (89.3%) and a shortened eleventh landing exactly on 0.9
    s = geometric_rounds(0.9, rate=0.2)
    assert len(s) == 11 and s[-1] == 0.9 and s[-2] == pytest.approx(1 - 0.8 ** 10)
    assert geometric_rounds(0.0, rate=0.2) == [0.0]


def test_geometric_rounds_per_layer_rates_keep_their_ratio_and_hit_the_whole():
    sizes = {"hidden": 900, "out": 100}
    rounds = geometric_rounds(0.6, rate={"hidden": 0.2, "out": 0.1}, sizes=sizes)
    for r, layer in enumerate(rounds[:-1]):  # whole rounds: each layer at its own geometric rate
        assert layer["hidden"] == pytest.approx(1 - 0.8 ** (r + 1))
        assert layer["out"] == pytest.approx(1 - 0.9 ** (r + 1))
    last = rounds[-1]
    whole = sum(last[k] * n for k, n in sizes.items()) / 1000
    assert whole == pytest.approx(0.6, abs=1e-9) and last["out"] < last["hidden"]


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
    (lambda: geometric_rounds(0.5, rate=-0.2), r"rate=-0.2 must be a float in \(0, 1\)"),
    (lambda: geometric_rounds(0.5, rounds=0), r"rounds=0 must be an int >= 1"),
    (lambda: geometric_rounds(0.5, rounds=2, rate=0.2), "give exactly one"),
    (lambda: geometric_rounds(0.5, rate={"a": 0.2}), "need sizes"),
    (lambda: lr_rewind_factor(0, lr_factor=lambda s, T: 1, total_steps=5, retrain_steps=6), "retrain_steps=6 > total"),
])
def test_bad_schedule_arguments(call, match):
    with pytest.raises(ConfigError, match=match):
        call()
