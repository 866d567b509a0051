"""taylor-fm. Scaled check (entry taylor-fm (a), (c)): (a) is the criterion test
(tests/criteria/test_taylor.py: the score from weight gradients equals |sum a * dL/da| from hooks, unit l2
norm). (c) scaled: LeNet-5 baseline, 4 rounds to 50% of the MACs (fc2 kept) with 5 SGD steps (batch 64,
lr 1e-3) between rounds, then accuracy on 2,000 test images before any further fine-tuning, against the
identical schedule with random ranking (mean of 3 seeds). Calibration run (2026-11-30): taylor-fm
84.40%, random 66.97% (60.65 / 68.65 / 71.60); threshold +2 points."""
import copy

import pytest
from test_l1_filter import accuracy, lenet_setup

from prunekit.methods import RunContext
from prunekit.methods.l1_filter import prune_iteratively


@pytest.fixture(scope="module")
def lenet():
    return lenet_setup()


def _iterate(model, criterion, calib, train, seed=0):
    m = copy.deepcopy(model)
    ctx = RunContext(model=m, example_inputs=calib[0][0][:1], target="macs=0.5", calib=calib, ignore=("fc2",),
                     train_data=train, seed=seed)
    info = prune_iteratively(ctx, "taylor-fm", criterion, per_round=1, max_rounds=4, steps_between=5, lr=1e-3)
    return m, info


@pytest.mark.needs_fashion
def test_taylor_fm_beats_random_with_the_same_schedule(lenet):
    model, test, calib, bundle = lenet
    train = bundle.calib(6, 64)
    m, info = _iterate(model, "taylor-act", calib, train)
    assert info["rounds"] == 4 and info["macs_after"] <= 0.5 * info["macs_before"]
    acc = accuracy(m, test)
    rnd = sum(accuracy(_iterate(model, "random", calib, train, s)[0], test) for s in (0, 1, 2)) / 3
    assert acc >= rnd + 0.02, (acc, rnd)
