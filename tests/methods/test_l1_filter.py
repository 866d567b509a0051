"""l1-filter, and the contract every one-shot filter method of this family keeps.

Scaled check (entry l1-filter (b)): the shipped LeNet-5 Fashion-MNIST baseline (`baselines/`), conv1/conv2/
fc1 cut to 50% of the MACs (fc2 kept), no fine-tuning, accuracy on a fixed 2,000-image test subset. L1
selection must beat random selection (mean of seeds 0-2) by 5 points. Calibration run (2026-11-30, the
same protocol): l1 88.05%, random 77.83% (80.10 / 75.15 / 78.25), so the margin is 10.2 points and the
threshold 5.
"""
import copy

import pytest
import torch

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.methods import RunContext, get_method, load_all

IDS = ["l1-filter", "fpgm", "hrank", "thinet", "cp-lasso", "nisp", "taylor-fo", "taylor-fm"]


def lenet_setup():
    from prunekit import data
    from prunekit.train.baseline import load_baseline

    b = data.load("fashion-mnist", subset=(2000, 2000), batch_size=250, val_fraction=0.0)
    return load_baseline("lenet5-fashion-mnist"), list(b.test), b.calib(2, 128), b


def accuracy(m, batches) -> float:
    m.eval()
    with torch.no_grad():
        return sum(int((m(x).argmax(1) == y).sum()) for x, y in batches) / sum(len(y) for _, y in batches)


def random_baseline(model, calib, test, target="macs=0.5") -> float:
    accs = []
    for seed in (0, 1, 2):
        m = copy.deepcopy(model)
        pk.prune_(m, example_inputs=calib[0][0][:1], criterion="random", target=target, ignore=["fc2"], seed=seed)
        accs.append(accuracy(m, test))
    return sum(accs) / 3


def run_method(mid, model, calib, target="macs=0.5", train=None, **options):
    load_all()
    spec = get_method(mid)
    ctx = RunContext(model=model, example_inputs=torch.zeros(1, 1, 28, 28), target=target, calib=calib, ignore=("fc2",),
                     train_data=train, options=spec.options(options))
    return spec.run(ctx)


@pytest.fixture(scope="module")
def lenet():
    return lenet_setup()


@pytest.mark.needs_fashion
def test_l1_filter_beats_random_before_finetune(lenet):
    model, test, calib, _ = lenet
    m = copy.deepcopy(model)
    r = run_method("l1-filter", m, calib)
    rep = r.info["engine_report"]
    assert rep["macs_after"] <= 0.5 * rep["macs_before"]
    assert pk.measure.count_macs(m, calib[0][0][:1]).total == rep["macs_after"]  # entry (a): counted = predicted
    acc, rnd = accuracy(m, test), random_baseline(model, calib, test)
    assert acc >= rnd + 0.05, (acc, rnd)


# ---- contract over the family: physically smaller, target met, errors leave the model unchanged ----------
def _tiny():
    from prunekit import models

    torch.manual_seed(0)
    m = models.create("lenet5")
    g = torch.Generator().manual_seed(0)
    calib = [(torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g))]
    return m, calib


@pytest.mark.parametrize("mid", IDS)
def test_contract_smaller_model_meets_target(mid):
    m, calib = _tiny()
    before = sum(p.numel() for p in m.parameters())
    opts = {"steps_between": 1, "max_rounds": 2} if mid.startswith("taylor") else {}
    r = run_method(mid, m, calib, train=calib, **opts)
    x = calib[0][0][:1]
    assert r.model is m and sum(p.numel() for p in m.parameters()) < before
    assert m.conv2.out_channels < 50 and m(x).shape == (1, 10)
    dense = pk.measure.count_macs(_tiny()[0], x).total
    assert pk.measure.count_macs(m, x).total <= 0.5 * dense
    assert get_method(mid).kind == "structured" and get_method(mid).module.startswith("prunekit.methods.")


@pytest.mark.parametrize("mid", [i for i in IDS if get_method(i).needs_data] if load_all() is None else [])
def test_contract_needs_calibration_data(mid):
    m, calib = _tiny()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ConfigError, match=f"method '{mid}'.*calib=None.*calibration batches"):
        run_method(mid, m, None)
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())


@pytest.mark.parametrize("mid", IDS)
def test_contract_unreachable_target_leaves_model_unchanged(mid):
    m, calib = _tiny()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ConfigError, match="cannot be reached"):
        run_method(mid, m, calib, target="macs=0.0001", train=calib)
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())
    assert m.conv2.out_channels == 50


def test_bad_option_names_choices():
    m, calib = _tiny()
    with pytest.raises(ConfigError, match="options\\['allocation'\\]='globl'.*did you mean 'global'"):
        run_method("l1-filter", m, calib, allocation="globl")
