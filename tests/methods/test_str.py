import os

import pytest
import torch
from method_setups import tiny_mlp_task
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.masks import get_masks
from prunekit.methods import RunContext, get_method
from prunekit.methods.agp import agp_callback
from prunekit.methods.str_ import STRCallback, SoftThreshold, attach_str_, detach_str_

FASHION = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
needs_fashion = pytest.mark.skipif(not os.path.exists(FASHION), reason="Fashion-MNIST not installed (make data)")


def test_threshold_extremes_give_the_dense_layer_and_a_bias_only_layer():
    torch.manual_seed(0)
    lin = nn.Linear(5, 3)
    ref = nn.Linear(5, 3)
    ref.load_state_dict(lin.state_dict())
    x = torch.randn(4, 5)
    attach_str_(lin, s_init=-float("inf"))  # sigmoid(-inf) = 0: no threshold
    torch.testing.assert_close(lin(x), ref(x))
    with torch.no_grad():
        lin.parametrizations.weight[0].s.fill_(10.0)  # sigmoid(10) = 0.99995 > max|W| (~0.45)
    torch.testing.assert_close(lin(x), ref.bias.expand(4, 3))


def test_soft_threshold_value_and_gradients_by_hand():
    st = SoftThreshold(s_init=0.0)  # threshold 0.5
    w = torch.tensor([0.8, -0.3, -1.5], requires_grad=True)
    out = st(w)
    torch.testing.assert_close(out, torch.tensor([0.3, 0.0, -1.0]))
    # L = 1*out0 + 2*out1 + 3*out2. dL/dw = c on kept entries, 0 on the pruned one.
    # dL/ds = sum over kept of c_i * d(sign(w_i)(|w_i| - sigmoid(s)))/ds = sum c_i * (-sign(w_i)) * sigmoid'(s)
    #       = (1 * -1 + 3 * +1) * sigmoid'(0) = 2 * 0.25 = 0.5
    (out * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    torch.testing.assert_close(w.grad, torch.tensor([1.0, 0.0, 3.0]))
    assert st.s.grad.item() == pytest.approx(0.5)


def test_threshold_gradient_through_a_layer_matches_the_analytic_value():
    lin = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.9, -0.6]]))
    attach_str_(lin, s_init=-1.0)  # threshold sigmoid(-1) = 0.26894
    st = lin.parametrizations.weight[0]
    x = torch.tensor([[2.0, 1.0]])
    loss = (lin(x) - 1.0).pow(2).sum()
    loss.backward()
    t = 1 / (1 + 2.718281828459045)
    y = 2.0 * (0.9 - t) + 1.0 * -(0.6 - t)  # W~ = [0.9 - t, -(0.6 - t)]
    # dL/dW~_i = 2 (y - 1) x_i; dW~_i/ds = -sign(W_i) sigmoid'(s) with sigmoid'(-1) = t (1 - t)
    expected = 2 * (y - 1) * (2.0 * -1 + 1.0 * 1) * t * (1 - t)
    assert expected != 0 and st.s.grad.item() == pytest.approx(expected, rel=1e-5)


def test_attach_detach_keeps_parameter_names_and_bakes_zeros():
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    keys = list(m.state_dict())
    fqns = attach_str_(m, s_init=0.0, ignore=["2"])
    assert fqns == ["0.weight"] and "0.parametrizations.weight.original" in m.state_dict()
    expected = (m[0].weight.detach() != 0)
    masks = detach_str_(m)
    assert list(m.state_dict()) == keys and torch.equal(masks["0.weight"], expected)


def test_controller_and_bad_arguments():
    cb = STRCallback(0.8, ramp_steps=10)
    assert cb.scheduled(0) == 0.0 and cb.scheduled(10) == pytest.approx(0.8) and cb.scheduled(5) == pytest.approx(0.7)
    with pytest.raises(ConfigError, match="target=1.2"):
        STRCallback(1.2)
    with pytest.raises(ConfigError, match="ramp_steps=0"):
        STRCallback(0.5, ramp_steps=0)


def test_the_steering_ramp_is_the_shared_cubic_ramp(monkeypatch):
    import prunekit.methods.str_ as str_mod
    from prunekit.schedules import agp_cubic

    calls = []
    monkeypatch.setattr(str_mod, "agp_cubic", lambda step, **kw: calls.append((step, kw)) or agp_cubic(step, **kw))
    assert STRCallback(0.8, ramp_steps=10).scheduled(5) == pytest.approx(0.7)
    assert calls == [(5, {"final": 0.8, "start": 0, "n": 10, "frequency": 1})]


def _tiny():
    return tiny_mlp_task(8, 32, 3, 8)


def test_plain_str_is_the_default_and_its_telemetry_separates_learned_from_topped_up():
    m, data = _tiny()
    assert get_method("str").defaults["steer"] is False  # the paper's emergent sparsity, no steering
    res = get_method("str").run(RunContext(model=m, example_inputs=None, target="sparsity=0.5", train_data=data,
                                           train_config=pk.TrainConfig(lr=0.1, progress=False), prune_epochs=2))
    t = res.telemetry
    assert res.engaged is True and t["steered"] is False
    assert t["threshold_rise"] > 0 and 0 < t["learned_sparsity"] < 0.5  # the thresholds alone fall short here
    assert t["topped_up"] == pytest.approx(res.info["sparsity"] - t["learned_sparsity"]) and t["topped_up"] > 0
    assert set(t["thresholds"]) == {"0.weight", "2.weight"}


def test_thresholds_that_cannot_move_warn_and_leave_everything_to_the_top_up():
    m, data = _tiny()
    with pytest.warns(MechanismWarning, match="raise options.s_init"):
        res = get_method("str").run(RunContext(model=m, example_inputs=None, target="sparsity=0.5", train_data=data,
                                               train_config=pk.TrainConfig(lr=0.1, weight_decay=0.0, progress=False),
                                               options={"s_init": -1e4}))  # sigmoid(-1e4) = 0: no gradient on s
    assert res.engaged is False and res.telemetry["learned_sparsity"] == 0.0
    assert res.telemetry["topped_up"] == pytest.approx(res.info["sparsity"]) and res.info["sparsity"] >= 0.5


def test_method_reaches_at_least_the_target_and_restores_names():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    data = [(torch.randn(16, 8), torch.randint(0, 3, (16,))) for _ in range(8)]
    res = get_method("str").run(RunContext(model=m, example_inputs=None, target="sparsity=0.5", train_data=data,
                                           train_config=pk.TrainConfig(lr=0.1, progress=False), prune_epochs=2,
                                           options={"steer": True}))
    assert res.telemetry["steered"] is True
    assert list(m.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    pruned = sum(int((~v).sum()) for v in get_masks(m).values())
    assert pruned >= round(0.5 * 352) and res.info["sparsity"] == pytest.approx(pruned / 352)


def small_scale_str(lam: float = 0.055, target: float = 0.9, seed: int = 0) -> dict:
    """The entry's check, scaled: plain STR (no steering) on LeNet-300-100, 6k Fashion-MNIST images, 5 epochs,
    s_init -5 and the decay on s (``lam``) picked so the learned sparsity is near ``target``; the learned
    sparsity is topped up to ``target`` when short. Baseline from the same run: uniform gradual magnitude
    pruning (AGP) to STR's final sparsity in the same epochs. Returns every figure the slow test asserts."""
    torch.set_num_threads(1)
    b = pk.data.load("fashion-mnist", batch_size=128, subset=(6000, 2000), val_fraction=0.0, augment=False)
    cfg = pk.TrainConfig(epochs=5, lr=0.05, seed=seed, progress=False)
    torch.manual_seed(seed)
    m = pk.models.create("lenet300")
    res = get_method("str").run(RunContext(model=m, example_inputs=None, target=f"sparsity={target}",
                                           train_data=b.train, train_config=cfg, prune_epochs=5, seed=seed,
                                           options={"lam": lam}))
    out = {"str": pk.evaluate(m, b.test)["accuracy"], "sparsity": res.info["sparsity"], **res.telemetry}
    torch.manual_seed(seed)
    g = pk.models.create("lenet300")
    pk.fit(g, b.train, cfg, callbacks=[agp_callback(final=res.info["sparsity"], total_steps=5 * len(b.train),
                                                    frequency=16)])
    out["agp"] = pk.evaluate(g, b.test)["accuracy"]
    return out


@pytest.mark.slow
@needs_fashion
def test_small_scale_plain_str_learns_a_first_layer_sparser_than_the_last_and_trails_gradual_magnitude():
    """Calibration (`python -c "from tests.methods.test_str import small_scale_str; print(small_scale_str())"`,
    seed 0): see the STR row of docs/methods-weight-2.md. The entry's (a) holds: the thresholds alone reach
    [85%, 95%] with the first layer sparser than the last. Its (b), STR >= AGP - 0.5 pt, does not hold at this
    5-epoch budget: STR trails AGP; the test asserts that finding, so it fails (and the doc must be revised)
    the day STR catches up."""
    r = small_scale_str()
    per = r["learned_per_layer"]
    assert 0.85 <= r["learned_sparsity"] <= 0.95 and r["topped_up"] <= 0.05, r
    assert per["fc1.weight"] > per["fc3.weight"], per
    assert r["str"] < r["agp"] - 0.005, r
