"""nisp. Scaled check (entry nisp (b)): LeNet-5 baseline (instead of LeNet-300-100), 50% of the MACs, no
fine-tuning, 2,000 test images, 256 calibration images for the final responses. Calibration run
(2026-11-30): nisp 86.85%, random 77.83% (mean of 3 seeds), l1 88.05%. Thresholds: >= random + 5 points
and >= l1 - 3 points (the entry's 0.5 is for LeNet-300-100)."""
import copy

import pytest
from test_l1_filter import accuracy, lenet_setup, random_baseline, run_method


@pytest.fixture(scope="module")
def lenet():
    return lenet_setup()


@pytest.mark.needs_fashion
def test_nisp_beats_random_near_l1(lenet):
    model, test, calib, _ = lenet
    m, l1 = copy.deepcopy(model), copy.deepcopy(model)
    run_method("nisp", m, calib)
    run_method("l1-filter", l1, calib)
    acc, rnd, acc_l1 = accuracy(m, test), random_baseline(model, calib, test), accuracy(l1, test)
    assert acc >= rnd + 0.05 and acc >= acc_l1 - 0.03, (acc, rnd, acc_l1)


def test_plan_with_criterion_nisp_opens_its_context_itself():
    import torch

    import prunekit as pk
    from prunekit.criteria.nisp import nisp_context
    from prunekit.errors import ConfigError
    from prunekit.testing import models

    m, x = models()["chain"]()
    calib = [(torch.randn(4, *x.shape[1:]), None)]
    auto = pk.plan(m, x, sparsity=0.5, criterion="nisp", calib=calib)
    with nisp_context(m, x, calib):
        explicit = pk.plan(m, x, sparsity=0.5, criterion="nisp", calib=calib)
    assert [g.channels for g in auto.groups] == [g.channels for g in explicit.groups]
    assert any(g.channels for g in auto.groups)
    with pytest.raises(ConfigError, match="criterion='nisp'.*pass calib="):
        pk.plan(m, x, sparsity=0.5, criterion="nisp")
