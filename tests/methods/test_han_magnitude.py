import os

from prunekit.data.sources import FASHION_DIR

FASHION = os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz")

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.masks import get_masks
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.han_magnitude import std_scaled_scores, std_threshold_mask


def test_threshold_rule_q1_prunes_68_percent_of_gaussian_weights():
    w = torch.randn(200_000, generator=torch.Generator().manual_seed(0)) * 0.05
    pruned = 1 - std_threshold_mask(w, 1.0).float().mean().item()
    assert pruned == pytest.approx(0.6827, abs=0.01)
    with pytest.raises(ConfigError, match="quality=-1"):
        std_threshold_mask(w, -1)


def test_std_scores_give_wide_layers_larger_cuts():
    model = nn.Sequential(nn.Linear(50, 50, bias=False), nn.Linear(50, 50, bias=False))
    with torch.no_grad():
        model[0].weight.normal_(0, 1.0)
        model[1].weight.normal_(0, 0.1)
    s = std_scaled_scores(model)
    # scaled by sigma, both layers rank alike: a shared q prunes about the same fraction of each
    load_all()
    ctx = RunContext(model=model, example_inputs=None, target="sparsity=0.5", options={"rounds": 1})
    get_method("han-magnitude").run(ctx)
    fr = {k: 1 - m.float().mean().item() for k, m in get_masks(model).items()}
    assert fr["0.weight"] == pytest.approx(0.5, abs=0.06) and fr["1.weight"] == pytest.approx(0.5, abs=0.06)
    assert set(s) == {"0.weight", "1.weight"}


def test_rounds_need_training_data():
    load_all()
    ctx = RunContext(model=nn.Linear(4, 4), example_inputs=None, target="sparsity=0.5")
    with pytest.raises(ConfigError, match="needs train_data"):
        get_method("han-magnitude").run(ctx)


# --- small-scale check (scaled; see the calibration note) -------------------------------------------------
# Protocol: LeNet-300-100, Fashion-MNIST 6,000 training / 2,000 test images (seeded subset, no augmentation),
# dense 4 epochs (SGD 0.05, cosine); han-magnitude to 92% in 3 rounds with 1 epoch of retraining between
# rounds + 1 final epoch, vs one-shot 92% + 3 epochs of masked retraining (same total retraining).
# Calibration run (`pytest -m slow tests/methods/test_han_magnitude.py`, seed 0, first run): dense 82.95%,
# iterative 79.15%, one-shot 80.00%. At this budget (dense under-trained, 3 retraining epochs) neither the
# paper's "no loss" nor "iterative beats one-shot" reproduces; the margins guard against regressions only:
# measured gap to dense 3.8 pp (allowed 5.0), iterative - one-shot = -0.85 pp (allowed -1.5).
HAN_MARGINS = {"vs_dense": 5.0, "vs_one_shot": 1.5}  # percentage points


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(FASHION), reason="Fashion-MNIST not installed")
def test_small_scale_iterative_magnitude_pruning_keeps_dense_accuracy(record_property):
    import copy

    import prunekit as pk
    from prunekit.masks import sparsify_
    from prunekit.methods import RunContext

    bundle = pk.data.load("fashion-mnist", batch_size=128, subset=(6000, 2000), augment=False, val_fraction=0)
    torch.manual_seed(0)
    dense = pk.models.create("lenet300", num_classes=10, in_channels=1, input_size=28)
    cfg = pk.TrainConfig(epochs=4, lr=0.05, progress=False)
    pk.fit(dense, bundle.train, cfg)
    acc_dense = pk.evaluate(dense, bundle.test)["accuracy"]
    iterative = copy.deepcopy(dense)
    load_all()
    ctx = RunContext(model=iterative, example_inputs=None, target="sparsity=0.92", train_data=bundle.train,
                     options={"rounds": 3, "retrain_epochs": 1, "retrain_lr_factor": 0.2}, train_config=cfg)
    get_method("han-magnitude").run(ctx)
    pk.fit(iterative, bundle.train, cfg.replace(epochs=1, lr=0.01))
    one_shot = copy.deepcopy(dense)
    sparsify_(one_shot, sparsity=0.92, global_=True, scores=std_scaled_scores(one_shot))
    pk.fit(one_shot, bundle.train, cfg.replace(epochs=3, lr=0.01))
    acc_it = pk.evaluate(iterative, bundle.test)["accuracy"]
    acc_os = pk.evaluate(one_shot, bundle.test)["accuracy"]
    record_property("accuracies", {"dense": acc_dense, "iterative": acc_it, "one_shot": acc_os})
    masks = get_masks(iterative)
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.92 * sum(m.numel() for m in masks.values()))
    assert all(int((iterative.get_parameter(k).detach()[~m] != 0).sum()) == 0 for k, m in masks.items())
    assert acc_it >= acc_dense - HAN_MARGINS["vs_dense"] / 100
    assert acc_it >= acc_os - HAN_MARGINS["vs_one_shot"] / 100
