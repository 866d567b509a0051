"""fpgm (one-shot). Scaled check (entry fpgm (b), without the soft schedule, which is the `sfp` method):
LeNet-5 baseline, 50% of the MACs, no fine-tuning, 2,000 test images. Calibration run (2026-11-30):
fpgm 88.65% vs random 77.83% (mean of 3 seeds); threshold +5 points."""
import copy

import pytest
from test_l1_filter import accuracy, lenet_setup, random_baseline, run_method


@pytest.fixture(scope="module")
def lenet():
    return lenet_setup()


@pytest.mark.needs_fashion
def test_fpgm_beats_random_before_finetune(lenet):
    model, test, calib, _ = lenet
    m = copy.deepcopy(model)
    run_method("fpgm", m, calib)
    acc, rnd = accuracy(m, test), random_baseline(model, calib, test)
    assert acc >= rnd + 0.05, (acc, rnd)
