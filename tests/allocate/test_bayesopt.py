import sys

import pytest
import torch

from prunekit.allocate.bayesopt import Variable, bayesopt
from prunekit.errors import ConfigError

torch.set_num_threads(1)


def _bowl(p):  # maximum 0 at (0.8, 0.8)
    return -(p["x"] - 0.8) ** 2 - (p["y"] - 0.8) ** 2


def _half_plane(p):  # x + y <= 1: the constrained optimum is (0.5, 0.5), objective -0.18
    return [p["x"] + p["y"] - 1.0]


XY = [Variable("x", 0.0, 1.0), Variable("y", 0.0, 1.0)]


def test_finds_the_known_constrained_optimum_and_records_every_evaluation():
    res = bayesopt(_bowl, XY, constraints=_half_plane, budget=16, startup=6, seed=0)
    assert len(res.evaluations) == 16 and res.budget == 16
    assert res.best.feasible and res.best.objective == pytest.approx(-0.18, abs=0.01)
    assert res.best.params["x"] == pytest.approx(0.5, abs=0.08) and res.best.params["y"] == pytest.approx(0.5, abs=0.08)
    for e in res.evaluations:  # the record: params, objective, constraint values and feasibility, consistent
        assert e.objective == pytest.approx(_bowl(e.params)) and e.constraints == pytest.approx(tuple(_half_plane(e.params)))
        assert e.feasible == (e.constraints[0] <= 0)
    assert res.best.objective == max(e.objective for e in res.evaluations if e.feasible)
    assert res.feasible_fraction == sum(e.feasible for e in res.evaluations) / 16
    # the GP-guided points (after the 6 random ones) keep to the feasible side more often than the random ones
    assert sum(e.feasible for e in res.evaluations[6:]) / 10 > sum(e.feasible for e in res.evaluations[:6]) / 6
    free = bayesopt(_bowl, XY, budget=16, startup=6, seed=0)  # without the constraint: the bowl's own maximum
    assert free.best.objective > -0.01 and free.best.objective > res.best.objective + 0.15


def test_same_seed_same_result_other_seed_other_points():
    a = bayesopt(_bowl, XY, constraints=_half_plane, budget=8, startup=4, seed=3)
    b = bayesopt(_bowl, XY, constraints=_half_plane, budget=8, startup=4, seed=3)
    c = bayesopt(_bowl, XY, constraints=_half_plane, budget=8, startup=4, seed=4)
    assert [e.as_dict() for e in a.evaluations] == [e.as_dict() for e in b.evaluations]
    assert a.best == b.best
    assert [e.params for e in a.evaluations] != [e.params for e in c.evaluations]


def test_enqueued_points_come_first_and_no_feasible_point_gives_no_best():
    res = bayesopt(_bowl, XY, constraints=lambda p: [1.0 - p["x"] * 0.5], budget=3, startup=2, seed=0,
                   enqueue=[{"x": 0.25, "y": 0.5}])
    assert res.evaluations[0].params == {"x": 0.25, "y": 0.5}
    assert res.best is None and res.feasible_fraction == 0.0  # x <= 1 can never make 1 - x/2 <= 0
    least = res.least_violating()
    assert least.constraints[0] == min(e.constraints[0] for e in res.evaluations)


@pytest.mark.parametrize("kw, match", [({"budget": 0}, "budget=0"), ({"startup": 0}, "startup=0"),
                                       ({"variables": []}, "variables=\\[\\]"),
                                       ({"variables": [Variable("x", 1.0, 0.0)]}, "bounds \\(1.0, 0.0\\)"),
                                       ({"enqueue": [{"x": 0.1}]}, "lacks \\['y'\\]")])
def test_bad_input_is_a_config_error(kw, match):
    args = {"variables": XY, "budget": 4, **kw}
    with pytest.raises(ConfigError, match=match):
        bayesopt(_bowl, args.pop("variables"), **args)


def test_missing_optuna_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'prunekit\[search\]'"):
        bayesopt(_bowl, XY, budget=2)
