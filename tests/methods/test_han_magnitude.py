import os

from prunekit.data.sources import FASHION_DIR

FASHION = os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz")

import pytest
import torch
from method_setups import separable_batches
from torch import nn

from prunekit.errors import ConfigError, MechanismWarning
from prunekit.masks import get_masks
from prunekit.methods import RunContext, get_method, load_all
from prunekit.train import TrainConfig
from prunekit.train.rewind import std_threshold_mask


def batches(d_in, classes, n=4):
    return separable_batches(n, 16, d_in, classes)


def one_round(model, sparsity, d_in, classes):
    """The method itself, one prune round and no retraining (so the masks are the threshold rule's alone)."""
    load_all()
    ctx = RunContext(model=model, example_inputs=None, target=f"sparsity={sparsity}", train_data=batches(d_in, classes),
                     options={"rounds": 1}, train_config=TrainConfig(epochs=1, lr=0.01, progress=False))
    with pytest.warns(MechanismWarning, match="raise options.rounds"):  # one round: no retraining
        return get_method("han-magnitude").run(ctx)


def test_the_method_prunes_below_quality_times_std_and_q1_removes_68_percent_of_gaussian_weights():
    model = nn.Sequential(nn.Linear(500, 400, bias=False))
    with torch.no_grad():
        model[0].weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    w = model[0].weight.detach().clone()
    res = one_round(model, 0.6827, 500, 4)
    q = res.telemetry["quality"]
    assert q == pytest.approx(1.0, abs=0.01)  # the paper's rule: q = 1 prunes the 68.27% within one sigma
    m = get_masks(model)["0.weight"]
    assert torch.equal(m, w.abs() >= q * w.std())  # the mask is exactly |w| >= q * std(layer)
    assert res.telemetry["layer_pruned"]["0.weight"] == pytest.approx(0.6827, abs=1e-4)
    with pytest.raises(ConfigError, match="quality=-1"):
        std_threshold_mask(w, -1)


def test_one_quality_parameter_sets_each_layers_threshold_from_its_own_std():
    model = nn.Sequential(nn.Linear(50, 50, bias=False), nn.Linear(50, 50, bias=False))
    with torch.no_grad():
        model[0].weight.normal_(0, 1.0)
        model[1].weight.normal_(0, 0.1)
    w = {k: v.detach().clone() for k, v in model.state_dict().items()}
    res = one_round(model, 0.5, 50, 4)
    q = res.telemetry["quality"]
    for k, m in get_masks(model).items():
        assert torch.equal(m, w[k].abs() >= q * w[k].std())
    # scaled by sigma both layers rank alike (a global magnitude cut would empty the narrow layer)
    fr = res.telemetry["layer_pruned"]
    assert fr["0.weight"] == pytest.approx(0.5, abs=0.06) and fr["1.weight"] == pytest.approx(0.5, abs=0.06)


def test_rounds_retrain_between_cuts_and_report_it():
    load_all()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 24), nn.ReLU(), nn.Linear(24, 3))
    ctx = RunContext(model=model, example_inputs=None, target="sparsity=0.8", train_data=batches(10, 3),
                     train_config=TrainConfig(epochs=1, lr=0.05, progress=False))
    res = get_method("han-magnitude").run(ctx)
    assert res.engaged is True and res.telemetry["retrain_rounds"] == 2  # 3 rounds, the last left to the caller
    assert [h["retrain_steps"] for h in res.info["rounds"]] == [4, 4, 0]
    assert res.info["sparsity"] == pytest.approx(0.8, abs=0.01)


def test_no_retraining_warns_and_bad_options_are_refused():
    load_all()
    model = nn.Sequential(nn.Linear(10, 24), nn.ReLU(), nn.Linear(24, 3))
    ctx = RunContext(model=model, example_inputs=None, target="sparsity=0.5", train_data=batches(10, 3),
                     options={"retrain_epochs": 0}, train_config=TrainConfig(epochs=1, lr=0.05, progress=False))
    with pytest.warns(MechanismWarning, match="raise options.rounds"):
        res = get_method("han-magnitude").run(ctx)
    assert res.engaged is False and res.telemetry["retrain_rounds"] == 0
    with pytest.raises(ConfigError, match="needs train data"):
        get_method("han-magnitude").run(RunContext(model=nn.Linear(4, 4), example_inputs=None, target="sparsity=0.5"))
    ctx = RunContext(model=nn.Linear(4, 4), example_inputs=None, target="sparsity=0.5", train_data=batches(4, 2),
                     options={"overrides": {"weight": 0.2}})
    with pytest.raises(ConfigError, match="need threshold='uniform'"):
        get_method("han-magnitude").run(ctx)


# --- small-scale check (scaled): what is true at this budget ----------------------------------------------------
# Protocol: LeNet-300-100, Fashion-MNIST 6,000 training / 2,000 test images (seeded subset, no augmentation),
# dense 4 epochs (SGD 0.05, cosine); han-magnitude to 92% in 3 rounds with 1 epoch of retraining between rounds
# + 1 final epoch, vs one-shot 92% with the same std rule + 3 epochs of masked retraining (same total).
# `python benchmarks/weight_han_dns_checks.py --seeds 0 1 2`: dense 82.95/83.20/83.85%, iterative
# 79.35/78.95/78.55%, one-shot 79.80/80.50/81.50%. Neither of the paper's claims reproduces at this budget
# (under-trained dense model, 3 retraining epochs): the 92% model loses 3.6-5.3 pp, and one-shot is ahead of
# iterative in every seed (+0.45/+1.55/+2.95 pp). This test asserts those facts for seed 0 (docs/masks.md,
# "Findings").


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(FASHION), reason="Fashion-MNIST not installed")
def test_small_scale_92pct_loses_2_to_6_points_and_iterative_does_not_beat_one_shot(record_property):
    import copy

    import prunekit as pk

    bundle = pk.data.load("fashion-mnist", batch_size=128, subset=(6000, 2000), augment=False, val_fraction=0)
    torch.manual_seed(0)
    dense = pk.models.create("lenet300", num_classes=10, in_channels=1, input_size=28)
    cfg = pk.TrainConfig(epochs=4, lr=0.05, progress=False)
    pk.fit(dense, bundle.train, cfg)
    acc_dense = pk.evaluate(dense, bundle.test)["accuracy"]
    load_all()
    iterative = copy.deepcopy(dense)
    ctx = RunContext(model=iterative, example_inputs=None, target="sparsity=0.92", train_data=bundle.train,
                     options={"rounds": 3, "retrain_epochs": 1, "retrain_lr_factor": 0.2}, train_config=cfg)
    res = get_method("han-magnitude").run(ctx)
    pk.fit(iterative, bundle.train, cfg.replace(epochs=1, lr=0.01))
    one_shot = copy.deepcopy(dense)
    ctx = RunContext(model=one_shot, example_inputs=None, target="sparsity=0.92", train_data=bundle.train,
                     options={"rounds": 1}, train_config=cfg)
    with pytest.warns(MechanismWarning):  # one round: no retraining inside the method (the fit below does it)
        get_method("han-magnitude").run(ctx)
    pk.fit(one_shot, bundle.train, cfg.replace(epochs=3, lr=0.01))
    acc_it = pk.evaluate(iterative, bundle.test)["accuracy"]
    acc_os = pk.evaluate(one_shot, bundle.test)["accuracy"]
    record_property("accuracies", {"dense": acc_dense, "iterative": acc_it, "one_shot": acc_os})
    assert res.engaged is True and res.telemetry["retrain_rounds"] == 2
    masks = get_masks(iterative)
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.92 * sum(m.numel() for m in masks.values()))
    assert all(int((iterative.get_parameter(k).detach()[~m] != 0).sum()) == 0 for k, m in masks.items())
    assert 0.02 <= acc_dense - acc_it <= 0.06  # measured 3.6 pp
    assert acc_it <= acc_os  # measured 79.35% vs 79.80%
