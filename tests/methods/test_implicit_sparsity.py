"""Implicit sparsity: dead channels (zero post-ReLU output on every image) are found and removed losslessly."""
import pytest
import torch
from method_setups import bundle_ctx, vgg_synthetic

import prunekit as pk
from prunekit.errors import MechanismWarning
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods._filter_common import cut_to_target
from prunekit.methods.implicit_sparsity import dead_channels


def test_planted_dead_channels_are_detected_and_removed_without_changing_the_logits():
    # The Adam-vs-SGD comparison of the entry (check (a)) needs long training: at this scale (vgg-small at
    # width 0.25, 2k Fashion-MNIST images, 2 epochs) no channel died with Adam or SGD at L2 5e-4..5e-2, so the
    # test plants dead channels and checks the detector and the lossless cut (check (b)).
    data = pk.data.load("fashion-mnist", batch_size=64, subset=(1000, 500), augment=False, val_fraction=0.0)
    torch.manual_seed(0)
    model = pk.models.create("vgg-small", width=0.25)
    pk.fit(model, data.train, pk.TrainConfig(epochs=1, lr=0.05, progress=False))
    planted = {"features.4": [1, 6], "features.11": [0], "features.15": [3, 4, 30]}
    with torch.no_grad():
        for bn, idx in planted.items():
            m = dict(model.named_modules())[bn]
            m.bias[idx] = -50.0  # BN output far below zero on every input: ReLU kills the channel
    ctx = RunContext(model=model, example_inputs=data.example_inputs(2), target="macs=0.99",
                     calib=data.calib(4))
    mean_act, dead = dead_channels(model, ctx)
    found = {k: v.nonzero().flatten().tolist() for k, v in dead.items() if v.any()}
    assert found == {"features.3": [1, 6], "features.10": [0], "features.14": [3, 4, 30]}
    model.eval()
    x = torch.cat([xb for xb, _ in data.test])
    before = model(x).detach()
    acc = pk.evaluate(model, data.test)["accuracy"]
    scores = {}
    for key, d in dead.items():
        s = mean_act[key].clone()
        s[d] = -1.0
        scores[key] = s
    info = cut_to_target(model, ctx, scores, "global")
    assert info["removed_channels"] == 6
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)
    assert pk.evaluate(model, data.test)["accuracy"] == acc


def _run(plant: bool, **options):
    load_all()
    model, data = vgg_synthetic(n_train=32, n_test=16, batch_size=16)
    if plant:  # channels that are dead when the Adam + L2 training starts (their gradient is zero: they stay dead)
        with torch.no_grad():
            model.features[4].bias[[1, 6]] = -50.0
    ctx = bundle_ctx(model, data, calib=data.calib(2), train_config=pk.TrainConfig(progress=False), options=options)
    return get_method("implicit-sparsity").run(ctx)


def test_dead_filters_after_adam_training_are_counted_apart_from_the_top_up():
    res = _run(plant=True)
    t = res.telemetry
    assert res.engaged is True and t["dead_found"] == 2
    assert t["dead_found"] + t["topped_up"] == res.info["removed_channels"] and t["topped_up"] > 0


def test_no_dead_filter_after_one_short_epoch_warns_and_names_the_budget():
    # issue 14: at the recipes' budget no filter died and the row was a plain activation cut, silently
    with pytest.warns(MechanismWarning, match=r"raise prune_epochs or options\.weight_decay"):
        res = _run(plant=False)
    assert res.engaged is False and res.telemetry["dead_found"] == 0
    assert res.telemetry["topped_up"] == res.info["removed_channels"] > 0
