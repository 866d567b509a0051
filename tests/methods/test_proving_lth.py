"""proving-lth (not-meaningful; ships the strong-ticket search): edge-popup supermask on frozen random weights."""
import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods import RunContext, get_method, load_all
from prunekit.train import evaluate

load_all()


def _task(seed=0, n=8):
    """A 2-class task a random 2-layer net can solve by masking: the label is the sign of the first input."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(32, 4, generator=g)
        out.append((x, (x[:, 0] > 0).long()))
    return out


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 256), nn.ReLU(), nn.Linear(256, 2))


def _run(model, data, **kw):
    opts = kw.pop("options", {})
    ctx = RunContext(model=model, example_inputs=data[0][0][:1], target=kw.pop("target", "sparsity=0.5"),
                     train_data=data, prune_epochs=kw.pop("prune_epochs", 4), options=opts, **kw)
    return get_method("proving-lth").run(ctx)


def test_registered_not_meaningful_with_the_entrys_reason():
    spec = get_method("proving-lth")
    assert spec.status == "not-meaningful" and spec.kind == "unstructured" and spec.needs == ("train",)
    assert "theoretical existence result" in spec.left_out and "frozen random weights" in spec.left_out
    assert spec.defaults == {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "scheduler": "cosine"}


def test_supermask_keeps_half_of_every_layer_with_kept_weights_bit_identical_and_engages():
    model, data = _net(), _task()
    drawn = {k: v.clone() for k, v in model.state_dict().items()}
    res = _run(model, data)
    assert res.engaged is True and res.telemetry["weights_changed"] == 0 and res.telemetry["mask_changed"] > 0
    after = model.state_dict()
    for name in ("0.weight", "2.weight"):
        w, w0 = after[name], drawn[name]
        assert int((w == 0).sum()) == w.numel() // 2  # exactly k kept per layer (no drawn weight is 0 here)
        kept = w != 0
        assert w[kept].numpy().tobytes() == w0[kept].numpy().tobytes()  # the kept weights are the draw, bit for bit
    for name in ("0.bias", "2.bias"):
        assert after[name].numpy().tobytes() == drawn[name].numpy().tobytes()


def test_learned_supermask_beats_the_initial_random_mask_on_the_same_frozen_weights():
    # the only thing trained is which half of the weights is used: accuracy must come from the mask choice
    data = _task(n=16)
    trained = _net()
    _run(trained, data, prune_epochs=6)
    untrained = _net()
    with pytest.warns(MechanismWarning):  # the initial top-k of the same score draw: the mask never moved
        _run(untrained, data, options={"lr": 1e-12}, prune_epochs=1)
    test = _task(seed=5, n=4)
    acc, acc0 = evaluate(trained, test)["accuracy"], evaluate(untrained, test)["accuracy"]
    assert acc >= 0.85 and acc >= acc0 + 0.3, (acc, acc0)  # measured 0.90 against 0.39


def test_no_score_movement_warns_with_the_knob():
    model, data = _net(), _task(n=2)
    with pytest.warns(MechanismWarning, match="raise prune_epochs or options.lr"):
        res = _run(model, data, options={"lr": 1e-12}, prune_epochs=1)
    assert res.engaged is False and res.telemetry["mask_changed"] == 0


def test_refuses_one_shot_and_bad_options_leaving_the_model_unchanged():
    model, data = _net(), _task(n=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="prune_epochs=0"):
        _run(model, data, prune_epochs=0)
    with pytest.raises(ConfigError, match="scheduler"):
        _run(model, data, options={"scheduler": "cosnie"})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.slow
def test_entry_check_fashion_mnist_lenet300_kaiming_uniform_supermask_reaches_75_percent():
    """The entry's check: frozen Kaiming-uniform LeNet-300-100, 50% supermask, 3 epochs, Fashion-MNIST.

    Calibrated by `python benchmarks/frozen_checks.py lth --init he-uniform` (seed 0): random dense net 12.66%,
    supermask 85.63% (docs/methods-weight-11.md); the weights drawn by ``kaiming_uniform_(w, nonlinearity="relu")``.
    """
    import prunekit as pk

    data = pk.data.load("fashion-mnist", batch_size=128, val_fraction=0.0, augment=False, seed=0)
    torch.manual_seed(0)
    model = pk.models.create("lenet300")
    for mod in model.modules():
        if isinstance(mod, nn.Linear):
            nn.init.kaiming_uniform_(mod.weight, nonlinearity="relu")
    drawn = {k: v.clone() for k, v in model.state_dict().items()}
    random_acc = evaluate(model, data.test)["accuracy"]
    res = get_method("proving-lth").run(RunContext(model=model, example_inputs=torch.zeros(1, 1, 28, 28),
                                                   target="sparsity=0.5", train_data=data.train, prune_epochs=3))
    acc = evaluate(model, data.test)["accuracy"]
    after = model.state_dict()
    assert res.telemetry["weights_changed"] == 0
    assert all(torch.equal(after[k][after[k] != 0], drawn[k][after[k] != 0]) for k in drawn)
    assert random_acc <= 0.2 and acc >= 0.75, (random_acc, acc)
