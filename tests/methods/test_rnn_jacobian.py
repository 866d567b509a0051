import copy
import math
import os

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.criteria.recurrent import jacobian_objective, jacobian_ones, layer_params, cell_step
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.masks import get_masks
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.rnn_jacobian import RNNJacobianConfig, jacobian_scores

FASHION = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
needs_fashion = pytest.mark.skipif(not os.path.exists(FASHION), reason="Fashion-MNIST not installed (make data)")
load_all()


class _Seq(nn.Module):
    """A recurrent layer over ``[B, T, F]`` and a classifier on the last state."""

    def __init__(self, rnn, classes=2):
        super().__init__()
        self.rnn, self.fc = rnn, nn.Linear(rnn.hidden_size, classes)

    def forward(self, x):
        return self.fc(self.rnn(x)[0][:, -1])


def _run(model, calib, target="sparsity=0.5", **options):
    spec = get_method("rnn-jacobian")
    return spec.run(RunContext(model=model, example_inputs=calib[0][0][:1], target=target, calib=calib,
                               options=options))


def _two_unit_cell():
    """h_t = tanh(W_ih x_t + W_hh h_{t-1}), 2 units, no bias; W_hh's two large weights cancel along 1."""
    rnn = nn.RNN(1, 2, bias=False, batch_first=True)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.tensor([[2.0], [-1.0]]))
        rnn.weight_hh_l0.copy_(torch.tensor([[3.0, -2.9], [0.5, 0.4]]))
    return rnn


def test_two_unit_cell_saliency_by_hand_keeps_the_weights_that_carry_j1_not_the_largest():
    """Issue 21's defining step. One step from h_0 = 0 on x = 0: h_1 = 0, so J = W_hh and chi = ||W_hh 1|| =
    sqrt(0.1^2 + 0.9^2); dchi/dW_hh[i, j] = (W_hh 1)_i / chi and W_ih gets no gradient (tanh'(0) has zero
    slope). Saliencies |w * g|: [[0.3, 0.29], [0.45, 0.36]] / chi; at 50% of the 6 weights the Jacobian keeps
    W_hh[1, :] and W_hh[0, 0], magnitude keeps 3, -2.9 and the input weight 2."""
    rnn = _two_unit_cell()
    x = torch.zeros(1, 1, 1)
    scores, chi = jacobian_scores(rnn, x, RNNJacobianConfig(steps=1, normalize="none"))
    assert chi == pytest.approx(math.sqrt(0.01 + 0.81), rel=1e-5)
    expect = torch.tensor([[3.0 * 0.1, 2.9 * 0.1], [0.5 * 0.9, 0.4 * 0.9]]) / chi
    assert torch.allclose(scores["weight_hh_l0"], expect, atol=1e-6)
    assert torch.equal(scores["weight_ih_l0"], torch.zeros(2, 1))
    model = _Seq(rnn)
    res = _run(model, [(x, torch.zeros(1, dtype=torch.long))], steps=1, normalize="none")
    masks = get_masks(model)
    assert masks["rnn.weight_hh_l0"].tolist() == [[True, False], [True, True]]
    assert masks["rnn.weight_ih_l0"].tolist() == [[False], [False]]
    assert "fc.weight" not in masks  # layers outside the recurrent cell stay dense (others="dense")
    assert res.telemetry["kept_not_by_magnitude"] == 2 and res.engaged is True


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU, nn.RNN])
def test_j1_equals_the_explicit_autograd_jacobian_times_ones(kind):
    torch.manual_seed(0)
    rnn = kind(3, 4, batch_first=True)
    p = layer_params(rnn, 0)
    x, h = torch.randn(1, 3), torch.randn(1, 4, requires_grad=True)
    c = torch.randn(1, 4) if kind is nn.LSTM else None
    h1, _ = cell_step(rnn, x, h, c, p)
    full = torch.autograd.functional.jacobian(lambda hh: cell_step(rnn, x, hh, c, p)[0], h.detach())[0, :, 0, :]
    assert torch.allclose(jacobian_ones(h1, h)[0], full @ torch.ones(4), atol=1e-5)
    if kind is not nn.LSTM:  # the cell step is the module's own recurrence (LSTM: c is part of the state)
        seq = torch.randn(2, 5, 3)
        ours = torch.zeros(2, 4)
        for t in range(5):
            ours, _ = cell_step(rnn, seq[:, t], ours, None, p)
        assert torch.allclose(ours, rnn(seq)[0][:, -1], atol=1e-5)


def test_lstm_cell_step_reproduces_nn_lstm():
    torch.manual_seed(0)
    rnn, seq = nn.LSTM(3, 4, num_layers=2, batch_first=True), torch.randn(2, 5, 3)
    out = seq
    for k in range(2):
        h, c, hs = torch.zeros(2, 4), torch.zeros(2, 4), []
        for t in range(5):
            h, c = cell_step(rnn, out[:, t], h, c, layer_params(rnn, k))
            hs.append(h)
        out = torch.stack(hs, 1)
    assert torch.allclose(out, rnn(seq)[0], atol=1e-5)


def _lstm_setting(seed=0):
    torch.manual_seed(seed)
    m = pk.models.create("lstm", num_classes=10, in_channels=1, input_size=8, hidden_size=16)
    g = torch.Generator().manual_seed(seed)
    return m, [(torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g))]


def test_engaged_at_defaults_on_a_tiny_lstm_and_the_target_met_on_the_recurrent_weights():
    m, calib = _lstm_setting()
    res = _run(m, calib, target="sparsity=0.8")
    t = res.telemetry
    assert res.engaged is True and t["scored_nonzero"] > 0 and t["kept_not_by_magnitude"] > 0
    masks = get_masks(m)
    assert set(masks) == {"lstm.weight_ih_l0", "lstm.weight_hh_l0"}
    kept = sum(int(v.sum()) for v in masks.values()) / sum(v.numel() for v in masks.values())
    assert kept == pytest.approx(0.2, abs=1e-3)
    assert bool((m.lstm.weight_hh_l0[~masks["lstm.weight_hh_l0"]] == 0).all())


def test_zero_recurrent_weights_give_no_jacobian_and_warn_naming_the_knob():
    m, calib = _lstm_setting()
    with torch.no_grad():
        m.lstm.weight_hh_l0.zero_()
    with pytest.warns(MechanismWarning, match="non-zero recurrent weights"):
        res = _run(m, calib, target="sparsity=0.8")
    assert res.engaged is False and res.telemetry["scored_nonzero"] == 0 and res.telemetry["chi_dense"] == 0


def test_gate_normalisation_keeps_more_of_the_spectrum_than_magnitude():
    """Telemetry figures on the tiny LSTM: chi after the Jacobian cut is above chi after the magnitude cut."""
    m, calib = _lstm_setting()
    t = _run(m, calib, target="sparsity=0.8").telemetry
    assert t["chi_pruned"] > t["chi_magnitude"]


def test_bad_input_is_refused_and_the_model_left_unchanged():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    before = copy.deepcopy(mlp.state_dict())
    calib = [(torch.randn(8, 1, 8, 8), torch.zeros(8, dtype=torch.long))]
    with pytest.raises(ConfigError, match="no nn.RNN/nn.LSTM/nn.GRU layer.*others='magnitude'"):
        _run(mlp, calib)
    with pytest.raises(ConfigError, match="normalize"):
        _run(mlp, calib, normalize="layer")
    m, calib = _lstm_setting()
    before_lstm = copy.deepcopy(m.state_dict())
    with pytest.raises(ConfigError, match="needs calib"):
        get_method("rnn-jacobian").run(RunContext(model=m, example_inputs=calib[0][0][:1], target="sparsity=0.8"))
    assert all(torch.equal(v, before[k]) for k, v in mlp.state_dict().items())
    assert all(torch.equal(v, before_lstm[k]) for k, v in m.state_dict().items()) and not get_masks(m)


def test_others_magnitude_prunes_the_classifier_too():
    m, calib = _lstm_setting()
    _run(m, calib, target="sparsity=0.8", others="magnitude")
    assert (1 - get_masks(m)["fc.weight"].float().mean()).item() == pytest.approx(0.8, abs=0.01)


@pytest.mark.heavy  # minutes of CPU: make test-heavy
@needs_fashion
def test_fashion_lstm_at_90_percent_beats_random_by_1_point_but_leaves_more_dead_units_than_snip():
    """The entry's check on the LSTM (128 units, Fashion-MNIST rows), pruned at init to 90% of the recurrent
    weights, 2 epochs of Adam 1e-3 on 10,000 images, 2,000 test images, seeds 0-2. Claim (a) holds against
    random only; rnn-jacobian stays below SNIP and magnitude, and (b) does not reproduce: it leaves more hidden
    units with no recurrent in-weight than SNIP. Calibration run (nice python benchmarks/rnn_jacobian_check.py,
    benchmarks/results/rnn_jacobian_check.jsonl), seeds 0 / 1 / 2: rnn-jacobian 0.6545 / 0.647 / 0.678 (mean
    0.660), random 0.598 / 0.620 / 0.621 (0.613), SNIP 0.6645 / 0.680 / 0.668 (0.671); dead units rnn-jacobian
    0.55 / 0.49 / 0.50, SNIP 0.02 / 0.01 / 0.02 (see docs/methods-weight-6.md). This test's own run (cells in
    another order, so other shuffles): means rnn-jacobian 0.642, random 0.6125, SNIP 0.671. Thresholds: the
    entry's +1 point over random (measured gaps 4.7 and 2.9 points), the dead-unit gap (measured 0.49)."""
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
    from benchmarks.rnn_jacobian_check import cell

    torch.set_num_threads(1)
    bundle = pk.data.load("fashion-mnist", subset=(10000, 2000), batch_size=64, val_fraction=0.0, augment=False)
    rows = {s: [cell(s, 0.9, seed, bundle, 2) for seed in (0, 1, 2)] for s in ("rnn-jacobian", "random", "snip")}
    acc = {s: sum(r["accuracy"] for r in v) / 3 for s, v in rows.items()}
    dead = {s: sum(r["dead_units"] for r in v) / 3 for s, v in rows.items()}
    assert acc["rnn-jacobian"] >= acc["random"] + 0.01, acc
    assert dead["rnn-jacobian"] > dead["snip"] + 0.2, dead


def test_prunekit_run_on_the_lstm_saves_a_model_whose_recurrent_weights_meet_the_target(tmp_path):
    from safetensors.torch import load_file

    from prunekit import workflows as W
    from prunekit.recipe import Recipe

    recipe = Recipe(data="synthetic", data_options={"shape": [1, 8, 8], "n_train": 128, "n_test": 64}, model="lstm",
                    baseline=None, batch_size=64, calib_batches=1, prune_epochs=1, finetune_epochs=1, latency=False,
                    lr=0.01, method="rnn-jacobian", target="sparsity=0.8", out=str(tmp_path / "run"), seed=0)
    W.run_job(recipe, progress=False)
    sd = load_file(str(tmp_path / "run" / "model.safetensors"))
    rec = [sd["lstm.weight_ih_l0"], sd["lstm.weight_hh_l0"]]
    assert sum(int((w == 0).sum()) for w in rec) / sum(w.numel() for w in rec) == pytest.approx(0.8, abs=0.002)
    assert int((sd["fc.weight"] == 0).sum()) == 0
