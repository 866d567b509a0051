import math

import pytest

from prunekit.errors import ConfigError
from prunekit.schedules import COOLING_SHAPES, cooled_constraint


def test_exponential_cooling_follows_the_papers_formula_and_ends_at_the_target():
    """c_t = C + (C0 - C) e^{-alpha (t+1)} + (C - C0) e^{-alpha T}; by hand for C = 0.1, C0 = 1, alpha = 0.5, T = 3:
    c_0 = 0.1 + 0.9 (e^-0.5 - e^-1.5) = 0.1 + 0.9 (0.606531 - 0.223130) = 0.445060, c_1 = 0.1 + 0.9 (0.367879 -
    0.223130) = 0.230274, c_2 = 0.1."""
    got = [cooled_constraint(t, final=0.1, initial=1.0, rounds=3) for t in range(3)]
    assert got == pytest.approx([0.445060, 0.230274, 0.1], abs=1e-6)
    assert got[-1] == 0.1 and got[0] > got[1] > got[2]
    for t in range(5):  # the formula itself, other rate and target
        want = 0.02 + 0.98 * math.exp(-0.3 * (t + 1)) - 0.98 * math.exp(-0.3 * 5)
        assert cooled_constraint(t, final=0.02, initial=1.0, rounds=5, alpha=0.3) == pytest.approx(want, abs=1e-12)


def test_linear_and_one_step_variants():
    assert [cooled_constraint(t, final=0.1, initial=1.0, rounds=3, shape="linear") for t in range(3)] == \
        pytest.approx([0.7, 0.4, 0.1])
    assert [cooled_constraint(t, final=0.1, initial=1.0, rounds=3, shape="one-step") for t in range(3)] == [0.1] * 3
    assert cooled_constraint(0, final=0.3, initial=1.0, rounds=1) == 0.3  # one round: the target at once
    assert COOLING_SHAPES == ("exponential", "linear", "one-step")


@pytest.mark.parametrize("kw, match", [({"rounds": 0}, "rounds=0"), ({"step": 3}, r"step=3 must be an int in \[0, rounds=3\)"),
                                       ({"shape": "cubic"}, "shape='cubic'"), ({"alpha": 0.0}, "alpha=0.0")])
def test_bad_arguments_are_config_errors(kw, match):
    args = {"step": 0, "final": 0.1, "initial": 1.0, "rounds": 3, **kw}
    step = args.pop("step")
    with pytest.raises(ConfigError, match=match):
        cooled_constraint(step, **args)
