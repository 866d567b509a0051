import os

from prunekit.data.sources import FASHION_DIR

FASHION = os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz")

import copy

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError, MechanismWarning
from prunekit.masks import get_masks
from prunekit.methods import RunContext, get_method, load_all


def test_weights_on_always_zero_pixels_are_pruned_first():
    load_all()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(32, 20)
    x[:, :10] = 0  # half the pixels are zero in every image: their first-layer weights score exactly 0
    ctx = RunContext(model=model, example_inputs=x[:1], target="sparsity=0.5", calib=[(x, torch.randint(0, 4, (32,)))])
    res = get_method("snip").run(ctx)
    m = get_masks(model)["0.weight"]
    assert int(m[:, :10].sum()) == 0
    assert res.info["sparsity"] == pytest.approx(0.5, abs=1 / 384)


def test_snip_needs_calibration_batches():
    load_all()
    ctx = RunContext(model=nn.Linear(3, 2), example_inputs=None, target="sparsity=0.5")
    with pytest.raises(ConfigError, match="pass a few calibration batches"):
        get_method("snip").run(ctx)


def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.0), nn.Linear(12, 3))


def _hand_sensitivity(model, x, y):
    """|w * dL/dw| with the loss of the network in train mode (the paper's setting), computed on a copy."""
    twin = copy.deepcopy(model).train()
    loss = nn.functional.cross_entropy(twin(x), y)
    ws = [twin[0].weight, twin[4].weight]
    gs = torch.autograd.grad(loss, ws)
    return torch.cat([(g * w).abs().flatten() for g, w in zip(gs, ws)])


def test_scores_with_the_network_in_train_mode_and_restores_modes_and_bn_statistics():
    """Issue 14: SNIP scored in eval mode. With BatchNorm, batch statistics (train mode) and the running
    statistics (eval mode) give different sensitivities; the kept set must be train mode's. Fails on the old
    code, which scored in eval mode and kept another set."""
    load_all()
    model = _bn_net()
    x = 3.0 * torch.randn(64, 6) + 2.0  # far from the initial running stats (mean 0, var 1)
    y = torch.randint(0, 3, (64,))
    train_scores = _hand_sensitivity(model, x, y)
    twin = copy.deepcopy(model).eval()
    ws = [twin[0].weight, twin[4].weight]
    eval_scores = torch.cat([(g * w).abs().flatten() for g, w in zip(
        torch.autograd.grad(nn.functional.cross_entropy(twin(x), y), ws), ws)])
    k = 108 - round(0.5 * 108)  # 72 + 36 weights
    train_keep = set(torch.topk(train_scores, k).indices.tolist())
    eval_keep = set(torch.topk(eval_scores, k).indices.tolist())
    assert train_keep != eval_keep  # the setting separates the two modes
    model.eval()
    model[3].train()  # a mixed state must come back as it was
    stats = (model[1].running_mean.clone(), model[1].running_var.clone(), int(model[1].num_batches_tracked))
    get_method("snip").run(RunContext(model=model, example_inputs=x[:1], target="sparsity=0.5", calib=[(x, y)]))
    masks = get_masks(model)
    kept = torch.cat([masks["0.weight"].flatten(), masks["4.weight"].flatten()])
    assert set(kept.nonzero().flatten().tolist()) == train_keep
    assert not model.training and not model[1].training and model[3].training
    assert torch.equal(model[1].running_mean, stats[0]) and torch.equal(model[1].running_var, stats[1])
    assert int(model[1].num_batches_tracked) == stats[2]


def test_telemetry_engaged_when_snip_keeps_other_weights_than_magnitude():
    load_all()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(32, 20)
    x[:, :10] = 0
    res = get_method("snip").run(RunContext(model=model, example_inputs=x[:1], target="sparsity=0.5",
                                            calib=[(x, torch.randint(0, 4, (32,)))]))
    assert res.engaged is True
    assert 0 < res.telemetry["kept_overlap_magnitude"] < 1 and res.telemetry["kept_not_by_magnitude"] > 0


def test_warns_when_sensitivity_ranks_exactly_like_magnitude():
    """One linear layer, two classes, one image of ones: |dL/dw_kj| = |p_k - y_k| * 1 is the same for every
    weight, so |g * w| ranks like |w| and SNIP keeps global magnitude's set."""
    load_all()
    torch.manual_seed(0)
    model = nn.Linear(8, 2)
    ctx = RunContext(model=model, example_inputs=None, target="sparsity=0.5",
                     calib=[(torch.ones(1, 8), torch.tensor([0]))])
    with pytest.warns(MechanismWarning, match="calibration batches whose loss has a gradient"):
        res = get_method("snip").run(ctx)
    assert res.engaged is False
    assert res.telemetry == {"kept_overlap_magnitude": 1.0, "kept_not_by_magnitude": 0}


def test_bad_option_is_a_config_error_and_leaves_the_model():
    load_all()
    model = nn.Linear(4, 2)
    before = model.weight.detach().clone()
    with pytest.raises(ConfigError, match="batches"):
        get_method("snip").run(RunContext(model=model, example_inputs=None, target="sparsity=0.5",
                                          calib=[(torch.randn(2, 4), torch.tensor([0, 1]))], options={"batches": 0}))
    assert torch.equal(model.weight, before) and not get_masks(model)


# --- small-scale check (scaled) ----------------------------------------------------------------------------
# LeNet-300-100 at init, Fashion-MNIST 6,000 / 2,000 images, no augmentation; SNIP 90% (one batch of 100) vs
# uniform random 90% in every layer vs dense, each trained 3 epochs (SGD 0.05, cosine). Calibration run
# (`pytest -m slow tests/methods/test_snip.py`, seed 0): dense 82.0%, SNIP 75.7%, random 41.1%. The entry's
# "within 2 pp of dense" does not hold after only 3 epochs (measured -6.3 pp, allowed -8.0); SNIP over
# uniform random: measured +34.6 pp (asserted >= +20).
SNIP_MARGINS = {"over_random": 20.0, "vs_dense": 8.0}  # pp


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(FASHION), reason="Fashion-MNIST not installed")
def test_small_scale_snip_beats_uniform_random_at_90(record_property):
    import prunekit as pk
    from prunekit.masks import sparsify_

    load_all()
    bundle = pk.data.load("fashion-mnist", batch_size=128, subset=(6000, 2000), augment=False, val_fraction=0)
    cfg = pk.TrainConfig(epochs=3, lr=0.05, progress=False)

    def fresh():
        torch.manual_seed(0)
        return pk.models.create("lenet300", num_classes=10, in_channels=1, input_size=28)

    accs = {}
    for name in ("dense", "snip", "random"):
        model = fresh()
        if name == "snip":
            calib = bundle.calib(1, batch_size=100)
            get_method("snip").run(RunContext(model=model, example_inputs=None, target="sparsity=0.9", calib=calib))
        elif name == "random":
            sparsify_(model, sparsity=0.9, criterion="random", seed=0)
        pk.fit(model, bundle.train, cfg)
        accs[name] = pk.evaluate(model, bundle.test)["accuracy"]
    record_property("accuracies", accs)
    assert accs["snip"] >= accs["random"] + SNIP_MARGINS["over_random"] / 100
    assert accs["snip"] >= accs["dense"] - SNIP_MARGINS["vs_dense"] / 100
