"""autoprune (Xiao et al., NeurIPS 2019): the net computes with w * h(m), h the hard step; batches alternate
between weight steps and m steps on loss + mu ||w h(m)||_1 (identity surrogate of h'); gates can re-open."""
import copy

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError, MechanismWarning
from prunekit.masks import get_masks
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.autoprune import HardGate, gate_step, train_gates
from prunekit.train import TrainConfig

from method_setups import sign_ctx, sign_mlp, sign_task  # noqa: E402

load_all()
SIZED = {"aux_lr": 30.0, "mu": 2e-3}  # sized to a few dozen m steps (the recipe's autoprune variant)


def data(n=12):
    return sign_task(n)


def model_():
    return sign_mlp()


def ctx(model=None, target="sparsity=0.8", epochs=4, **options):
    return sign_ctx(model or model_(), data(), target, epochs, options)


def test_hard_gate_is_a_step_forward_and_straight_through_backward():
    m = torch.tensor([-0.5, 0.0, 0.3], requires_grad=True)
    h = HardGate.apply(m)
    assert h.tolist() == [0.0, 0.0, 1.0]  # pruned while m <= 0
    (h * torch.tensor([2.0, 3.0, 4.0])).sum().backward()
    assert m.grad.tolist() == [2.0, 3.0, 4.0]  # identity surrogate of h'


def test_alternating_steps_and_the_m_update_by_hand():
    """Batch 0 steps the weights only; batch 1 steps m only, by (dL/d(wh) + mu sign(w)) * w."""
    lin = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.25, -0.5]]))
    w0 = lin.weight.detach().clone()
    x0, y0 = torch.tensor([[1.0, 2.0, -1.0]]), torch.tensor([1])
    x1, y1 = torch.tensor([[4.0, 0.5, -0.2]]), torch.tensor([0])

    def grad_eff(w, x, y):  # dL/dW of cross-entropy for a linear model, by hand
        p = torch.softmax(x @ w.T, 1)
        return (p - torch.eye(2)[y]).T @ x

    w1 = w0 - 0.1 * grad_eff(w0, x0, y0)  # all gates open (m0 = |w0| > 0)
    m1 = gate_step(w1, w0.abs(), grad_eff(w1, x1, y1), aux_lr=0.5, mu=0.2)
    m, stats = train_gates(lin, {"weight": lin.weight}, [(x0, y0), (x1, y1)], epochs=1, lr=0.1, momentum=0.0,
                           aux_lr=0.5, mu=0.2)
    assert torch.allclose(lin.weight.detach(), w1, atol=1e-6)  # the m step left the weights alone
    assert torch.allclose(m["weight"], m1, atol=1e-6)
    assert stats["m_steps"] == 1 and stats["w_steps"] == 1


def test_a_closed_gate_reopens_when_the_loss_wants_its_weight_back():
    """Recoverability: m <= 0 prunes the weight but m still gets the loss' signal and can turn positive."""
    lin = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[2.0], [-2.0]]))
    x, y = torch.ones(4, 1), torch.zeros(4, dtype=torch.long)  # class 0 needs weight[0] (> 0): it should come back
    m0 = {"weight": torch.tensor([[-0.01], [0.5]])}
    m, stats = train_gates(lin, {"weight": lin.weight}, [(x, y)] * 4, epochs=1, lr=0.0, momentum=0.0,
                           aux_lr=1.0, mu=0.0, m0=m0)
    assert m["weight"][0, 0] > 0 and stats["reopened"] == 1 and stats["ever_closed"] == 0.5


def test_gates_close_by_themselves_and_the_top_up_is_reported_apart():
    c = ctx(target="sparsity=0.3", **SIZED)
    res = get_method("autoprune").run(c)
    t = res.telemetry
    assert res.engaged is True and t["m_steps"] == 24 and t["gate_closed"] >= 0.3 and t["topped_up"] == 0
    assert t["ever_closed"] >= t["gate_closed"]
    weights = [c.model[0].weight, c.model[2].weight]
    zeros = sum(int((w == 0).sum()) for w in weights) / 360
    assert zeros == pytest.approx(t["gate_closed"])  # the gates' own sparsity, beyond the 30% asked
    c = ctx(target="sparsity=0.99", **SIZED)
    res = get_method("autoprune").run(c)
    assert res.telemetry["topped_up"] == pytest.approx(0.99 - res.telemetry["gate_closed"], abs=1 / 360)
    assert sum(int((w == 0).sum()) for w in [c.model[0].weight, c.model[2].weight]) == round(0.99 * 360)


def test_paper_defaults_barely_move_the_gates_in_a_short_run_and_warn_with_the_knob():
    """m starts at |w| and moves by about aux_lr * mu = 7.5e-4 of it per m step: 24 m steps close nothing."""
    with pytest.warns(MechanismWarning, match="raise options.aux_lr"):
        res = get_method("autoprune").run(ctx())
    assert res.engaged is False and res.telemetry["gate_closed"] < 0.01 and res.telemetry["topped_up"] > 0.79


def test_bad_input_is_refused_and_the_model_is_unchanged():
    c = ctx(aux_lr=0.0)
    before = copy.deepcopy(c.model.state_dict())
    with pytest.raises(ConfigError, match=r"options\['aux_lr'\]=0.0 must be > 0"):
        get_method("autoprune").run(c)
    assert all(torch.equal(before[k], v) for k, v in c.model.state_dict().items()) and not get_masks(c.model)
    with pytest.raises(ConfigError, match="did you mean 'alternate'"):
        get_method("autoprune").run(ctx(split="alternat"))
    with pytest.raises(ConfigError, match="sparsity"):
        get_method("autoprune").run(ctx(target="macs=0.5"))
    c = ctx(epochs=0)
    with pytest.raises(ConfigError, match="prune_epochs=0 must be >= 1"):
        get_method("autoprune").run(c)
    assert all(torch.equal(before[k], v) for k, v in c.model.state_dict().items()) and not get_masks(c.model)


def _entry_check(**options):
    """Shipped LeNet-300-100, 6 epochs of autoprune on all training images, against one-shot global magnitude
    at the gates' sparsity; both then fine-tune 1 epoch on 6,000 images."""
    import prunekit as pk
    from prunekit.masks import sparsify_
    from prunekit.train.baseline import load_baseline
    torch.set_num_threads(1)
    full = pk.data.load("fashion-mnist", batch_size=128, augment=False, val_fraction=0)
    small = pk.data.load("fashion-mnist", batch_size=128, subset=(6000, 2000), augment=False, val_fraction=0)
    base = load_baseline("lenet300-fashion-mnist")
    acc_dense = pk.evaluate(base, full.test)["accuracy"]
    model = copy.deepcopy(base)
    c = RunContext(model=model, example_inputs=None, target="sparsity=0.1", train_data=full.train, prune_epochs=6,
                   train_config=TrainConfig(lr=0.01, progress=False), options=options)
    res = get_method("autoprune").run(c)
    acc_gates = pk.evaluate(model, full.test)["accuracy"]
    s = res.info["sparsity"]
    one = copy.deepcopy(base)
    sparsify_(one, sparsity=s, allocation="global")
    acc_one_cut = pk.evaluate(one, full.test)["accuracy"]
    ft = TrainConfig(epochs=1, lr=0.01, progress=False)
    pk.fit(model, small.train, ft)
    pk.fit(one, small.train, ft)
    got = {"dense": acc_dense, "gates": acc_gates, "gates_ft": pk.evaluate(model, full.test)["accuracy"],
           "one_cut": acc_one_cut, "one_ft": pk.evaluate(one, full.test)["accuracy"], "sparsity": s,
           "telemetry": res.telemetry, "layers": res.info["layer_sparsity"]}
    print("AUTOPRUNE", options, got)
    return res, got


@pytest.mark.slow
@pytest.mark.needs_fashion
def test_small_scale_autoprune_closes_80pct_of_gates_and_reopens_some_but_trails_magnitude(record_property):
    """Entry check: 6 epochs on all 60,000 training images (1,407 m steps), mu 5e-2, aux_lr 1.5e-2 (the paper's),
    weight lr 0.01; the gates' own sparsity (top-up not needed: target 10%); against one-shot global magnitude
    at that sparsity; both then fine-tune 1 epoch on 6,000 images.

    Calibration run (2026-12-07, seed 0, `pytest -p no:xdist -m slow -s tests/methods/test_autoprune.py`): dense
    90.15%; the gates closed 85.3% of the weights (fc1 84.8%, fc2 89.0%, fc3 97.7%) and re-opened 218 times;
    accuracy 59.50%, 60.37% after the fine-tune; one-shot magnitude at 85.3% 69.64%, 87.74% after the fine-tune.
    (a) 80% closed and (b) re-openings hold; (a)'s "within 1.5 pp of dense" and (c) ">= magnitude + fine-tune
    - 0.5 pp" do not: our reading of the regulariser closes almost all of the classifier (docs/methods-weight-5.md).
    """
    res, got = _entry_check()
    record_property("measured", got)
    assert res.engaged is True and res.telemetry["topped_up"] == 0
    assert res.telemetry["gate_closed"] >= 0.80  # measured 0.853
    assert res.telemetry["reopened"] > 0  # measured 218
    assert res.info["layer_sparsity"]["fc3.weight"] > 0.95  # measured 0.977: the classifier is nearly cut off
    assert got["gates_ft"] < got["one_ft"] - 0.1  # measured -27.4 pp (the entry asks >= -0.5 pp)


@pytest.mark.slow
@pytest.mark.needs_fashion
def test_small_scale_autoprune_with_the_classifier_exempt_still_trails_magnitude(record_property):
    """The same with exempt=("last",) (fc3 stays dense). Calibration run (same command): the gates closed 85.6%
    of fc1 + fc2 (84.98% / 90.30%), re-opened 67 times; accuracy 73.14%, 74.66% after the fine-tune; one-shot
    global magnitude at 85.6% of every layer 87.64% after the fine-tune."""
    res, got = _entry_check(exempt=("last",))
    record_property("measured", got)
    assert res.engaged is True and "fc3.weight" not in res.info["layer_sparsity"]
    assert res.telemetry["gate_closed"] >= 0.80 and res.telemetry["reopened"] > 0  # measured 0.856, 67
    assert got["gates_ft"] > 0.70  # measured 74.66%: better than with fc3 gated (60.37%)
    assert got["gates_ft"] < got["one_ft"] - 0.08  # measured -12.98 pp
