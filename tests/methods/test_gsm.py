import os

import pytest
import torch
from method_setups import tiny_mlp_task
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.masks import get_masks
from prunekit.methods import RunContext, get_method
from prunekit.methods.gsm import GSM, gsm_active_masks

FASHION = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
needs_fashion = pytest.mark.skipif(not os.path.exists(FASHION), reason="Fashion-MNIST not installed (make data)")


def test_active_set_is_global_taylor_not_magnitude():
    w = {"a": torch.tensor([[3.0, 0.1]]), "b": torch.tensor([[0.3, 0.5]])}
    g = {"a": torch.tensor([[0.01, 2.0]]), "b": torch.tensor([[1.0, 1.0]])}  # |w*g| = .03 .2 | .3 .5
    act = gsm_active_masks(w, g, 2)
    # magnitude would keep 3.0 and 0.5; the global Taylor ranking keeps both weights of "b"
    assert act["a"].tolist() == [[False, False]] and act["b"].tolist() == [[True, True]]


def test_passive_weights_only_decay_and_the_end_cut_is_exact():
    torch.manual_seed(0)
    lin = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.5, 0.25, 0.125]]))
    cb = GSM(0.5)
    state = pk.train.TrainState(model=lin)
    cb.on_train_start(state)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1, weight_decay=0.1)
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    lin(x).sum().backward()  # grad = 1 everywhere: Taylor = |w|, active = the two largest
    cb.on_after_backward(state)
    assert lin.weight.grad.tolist() == [[1.0, 1.0, 0.0, 0.0]]
    opt.step()
    # active: w - lr*(1 + wd*w); passive: w - lr*wd*w (decay only)
    torch.testing.assert_close(lin.weight.detach(), torch.tensor([[0.89, 0.395, 0.2475, 0.12375]]))
    cb.on_train_end(state)
    assert get_masks(lin)["weight"].tolist() == [[True, True, False, False]]
    assert lin.weight[0, 2] == 0 and lin.weight[0, 3] == 0


def _tiny():
    return tiny_mlp_task(8, 16, 3, 6)


def test_telemetry_shows_masked_updates_and_weights_leaving_the_active_set():
    model, data = _tiny()
    res = get_method("gsm").run(RunContext(model=model, example_inputs=None, target="sparsity=0.75", train_data=data,
                                           prune_epochs=2, train_config=pk.TrainConfig(lr=0.01, progress=False)))
    t = res.telemetry
    assert res.engaged is True and t["steps"] == 12
    assert t["masked_fraction"] == pytest.approx(1 - round(0.25 * 176) / 176)  # Q = 44 of 176 active every step
    assert 0 < t["left_active"] <= 176 and t["passive_shrink_per_step"] == pytest.approx(0.01 * 5e-4 / 0.01)
    assert int((model[0].weight == 0).sum() + (model[2].weight == 0).sum()) == 132


def test_without_weight_decay_passive_weights_only_freeze_and_the_run_warns():
    model, data = _tiny()
    with pytest.warns(MechanismWarning, match="raise options.weight_decay"):
        res = get_method("gsm").run(RunContext(model=model, example_inputs=None, target="sparsity=0.75",
                                               train_data=data, options={"weight_decay": 0.0},
                                               train_config=pk.TrainConfig(lr=0.01, progress=False)))
    assert res.engaged is False and res.telemetry["passive_shrink_per_step"] == 0.0


def test_bad_sparsity_and_target():
    with pytest.raises(ConfigError, match="sparsity=1.5"):
        GSM(1.5)
    with pytest.raises(ConfigError, match="sparsity=S"):
        get_method("gsm").run(RunContext(model=nn.Linear(2, 2), example_inputs=None, target="params=0.5"))


@pytest.mark.slow
@needs_fashion
def test_small_scale_gsm_drives_passive_weights_to_zero_without_masks():
    """Entry check, scaled: LeNet-300-100 on 6k Fashion-MNIST images (batch 64), C = 10 (90%), lr 0.01
    cosine, momentum 0.99, 8 epochs (752 steps); weight decay raised to 2e-2 so that passive weights decay
    within the budget (per-step shrink lr*wd/(1-momentum) = 2e-2). Baselines from the same run: the dense
    net trained the same way (wd 5e-4), and one-shot global magnitude pruning of it to 10% without
    fine-tuning. Calibration run (seed 0): 71% of weights below 1e-3 (91.8% below 1e-2; the active set still
    changes by ~5k of 26.6k weights per step at the end, so the entry's 90% needs a longer run); accuracy
    82.75% before and 82.6% after the hard cut; dense 84.3%, one-shot 75.2%. Thresholds: >= 65% below
    1e-3, the cut changes accuracy < 0.5 pt, within 3 pt of dense, >= one-shot + 2 pt."""
    torch.set_num_threads(1)
    b = pk.data.load("fashion-mnist", batch_size=64, subset=(6000, 2000), val_fraction=0.0, augment=False)
    cfg = pk.TrainConfig(epochs=8, lr=0.01, momentum=0.99, weight_decay=2e-2, seed=0, progress=False)
    torch.manual_seed(0)
    dense = pk.models.create("lenet300")
    init = {k: v.clone() for k, v in dense.state_dict().items()}
    pk.fit(dense, b.train, cfg.replace(weight_decay=5e-4))
    dense_acc = pk.evaluate(dense, b.test)["accuracy"]
    pk.sparsify_(dense, sparsity=0.9, global_=True)
    oneshot_acc = pk.evaluate(dense, b.test)["accuracy"]

    m = pk.models.create("lenet300")
    m.load_state_dict(init)
    cb = GSM(0.9, harden_at_end=False)
    pk.fit(m, b.train, cfg, callbacks=[cb])
    soft_acc = pk.evaluate(m, b.test)["accuracy"]
    near_zero = sum(int((p.abs() < 1e-3).sum()) for p in cb.params.values()) / sum(
        p.numel() for p in cb.params.values())
    pk.masks.install_masks_(m, cb.final_masks())
    hard_acc = pk.evaluate(m, b.test)["accuracy"]
    assert near_zero >= 0.65, near_zero
    assert abs(hard_acc - soft_acc) < 0.005, (soft_acc, hard_acc)
    assert hard_acc >= dense_acc - 0.03, (dense_acc, hard_acc)
    assert hard_acc >= oneshot_acc + 0.02, (oneshot_acc, hard_acc, dense_acc)
