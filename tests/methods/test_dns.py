import os

from prunekit.data.sources import FASHION_DIR

FASHION = os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz")

import pytest
import torch
from torch import nn

from prunekit.errors import MechanismWarning
from prunekit.masks import get_masks, mask_modes
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.dns import dns_thresholds, hysteresis_mask
from prunekit.train import TrainConfig


def test_hysteresis_rule_on_a_hand_made_tensor():
    w = torch.tensor([[0.05, 0.095, 0.105, 0.3], [-0.05, -0.095, -0.105, -0.3]])
    m = torch.tensor([[True, True, True, True], [False, False, False, False]])
    out = hysteresis_mask(w, m, 0.1)
    # kept: cut only at |w| <= 0.09; pruned: spliced only at |w| > 0.11; the band in between keeps its state
    assert out.tolist() == [[False, True, True, True], [False, False, False, True]]


def test_thresholds_hit_the_first_cut():
    p = {"w": torch.randn(1000, generator=torch.Generator().manual_seed(0))}
    t = dns_thresholds(p, 0.8)["w"]
    assert float((p["w"].abs() <= 0.9 * t).float().mean()) == pytest.approx(0.8, abs=0.002)


def test_dns_splices_and_ends_with_frozen_hard_masks():
    load_all()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30 * 16, 12, generator=g)
    data = [(x[i:i + 16], (x[i:i + 16, :3].argmax(1))) for i in range(0, len(x), 16)]
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 3))
    ctx = RunContext(model=model, example_inputs=None, target="sparsity=0.8", train_data=data, prune_epochs=2,
                     options={"gamma": 0.0}, train_config=TrainConfig(epochs=1, lr=0.2, progress=False))
    res = get_method("dns").run(ctx)
    assert res.info["splices"] >= 1 and res.info["mask_updates"] > 10
    assert set(mask_modes(model).values()) == {"hard"}
    assert res.info["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert res.engaged is True and res.telemetry["splices"] == res.info["splices"]


def test_masks_frozen_from_the_start_splice_nothing_and_warn():
    load_all()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30 * 16, 12, generator=g)
    data = [(x[i:i + 16], (x[i:i + 16, :3].argmax(1))) for i in range(0, len(x), 16)]
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 3))
    ctx = RunContext(model=model, example_inputs=None, target="sparsity=0.8", train_data=data, prune_epochs=1,
                     options={"stop_fraction": 1e-6}, train_config=TrainConfig(epochs=1, lr=0.2, progress=False))
    with pytest.warns(MechanismWarning, match="raise prune_epochs or options.stop_fraction"):
        res = get_method("dns").run(ctx)
    assert res.engaged is False and res.telemetry["splices"] == 0 and res.telemetry["mask_updates"] == 0


# --- small-scale check (scaled): what is true at this budget ----------------------------------------------------
# LeNet-300-100, Fashion-MNIST 6,000 / 2,000 images, no augmentation; dense 4 epochs (SGD 0.05, cosine);
# DNS to 95% for 2 epochs (lr 0.01) + 1 epoch with frozen masks, vs one-shot magnitude 95% per layer + 3
# epochs of masked retraining. `python benchmarks/weight_han_dns_checks.py --seeds 0 1 2`: dense
# 82.95/83.20/83.85%, DNS 78.00/78.75/77.90%, one-shot 79.75/78.65/79.90%, 1,200/1,045/1,162 splices. Splicing
# happens, but at this budget (2 epochs of surgery; the reference code runs 14,000 iterations) DNS does not beat
# one-shot magnitude pruning (-1.75/+0.10/-2.00 pp) and loses 4.5-6.0 pp to dense. This test asserts those
# facts for seed 0 (docs/masks.md, "Findings").


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(FASHION), reason="Fashion-MNIST not installed")
def test_small_scale_dns_splices_but_does_not_beat_one_shot_at_a_2_epoch_budget(record_property):
    import copy

    import prunekit as pk
    from prunekit.masks import sparsify_

    load_all()
    bundle = pk.data.load("fashion-mnist", batch_size=128, subset=(6000, 2000), augment=False, val_fraction=0)
    torch.manual_seed(0)
    dense = pk.models.create("lenet300", num_classes=10, in_channels=1, input_size=28)
    cfg = pk.TrainConfig(epochs=4, lr=0.05, progress=False)
    pk.fit(dense, bundle.train, cfg)
    acc_dense = pk.evaluate(dense, bundle.test)["accuracy"]
    model = copy.deepcopy(dense)
    ctx = RunContext(model=model, example_inputs=None, target="sparsity=0.95", train_data=bundle.train,
                     prune_epochs=2, train_config=cfg.replace(lr=0.01))
    res = get_method("dns").run(ctx)
    pk.fit(model, bundle.train, cfg.replace(epochs=1, lr=0.01))
    acc_dns = pk.evaluate(model, bundle.test)["accuracy"]
    one_shot = copy.deepcopy(dense)
    sparsify_(one_shot, sparsity=0.95)
    pk.fit(one_shot, bundle.train, cfg.replace(epochs=3, lr=0.01))
    acc_os = pk.evaluate(one_shot, bundle.test)["accuracy"]
    record_property("numbers", {"dense": acc_dense, "dns": acc_dns, "one_shot": acc_os, "splices": res.info["splices"]})
    assert res.engaged is True and res.telemetry["splices"] >= 100  # measured 1,200
    assert acc_dns <= acc_os  # measured 78.00% vs 79.75%
    assert 0.03 <= acc_dense - acc_dns <= 0.07  # measured 4.95 pp
