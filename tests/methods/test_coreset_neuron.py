import os

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods import RunContext, get_method
from prunekit.methods.coreset_neuron import sample_coreset, sensitivities

FASHION = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
needs_fashion = pytest.mark.skipif(not os.path.exists(FASHION), reason="Fashion-MNIST not installed (make data)")


def test_sampling_probabilities_by_hand():
    """Three neurons with incoming norms 1, 2, 1 feeding two next-layer neurons with weights [1, 1, 2] and
    [0, 1, 3]. Next neuron 1: shares |w| ||p|| = [1, 2, 2] / 5; neuron 2: [0, 2, 3] / 5. The layer's sensitivity is
    the max over them, [0.2, 0.4, 0.6], normalised: [1/6, 1/3, 1/2] (sum: [0.2, 0.8, 1.0] / 2)."""
    incoming, outgoing = torch.tensor([1.0, 2.0, 1.0]), torch.tensor([[1.0, 1.0, 2.0], [0.0, 1.0, 3.0]])
    torch.testing.assert_close(sensitivities(incoming, outgoing), torch.tensor([1 / 6, 1 / 3, 1 / 2]))
    torch.testing.assert_close(sensitivities(incoming, outgoing, "sum"), torch.tensor([0.1, 0.4, 0.5]))
    torch.testing.assert_close(sensitivities(incoming, -outgoing), sensitivities(incoming, outgoing))  # |w|


def _layer(seed=0, hidden=200):
    g = torch.Generator().manual_seed(seed)
    w_in = torch.randn(hidden, 20, generator=g) * torch.logspace(-2, 0, hidden)[:, None]  # uneven neuron norms
    w_out = torch.randn(5, hidden, generator=g)
    x = torch.rand(500, 20, generator=g) * 2 - 1  # random bounded inputs, no data set
    act = torch.relu(x @ w_in.T)
    prob = sensitivities(w_in.norm(dim=1).double(), w_out.double())
    return act, w_out, prob, act @ w_out.T


def _estimate(act, w_out, prob, counts, m):
    factor = torch.where(counts > 0, counts.double() / (m * prob), torch.zeros_like(prob))
    return act @ (w_out * factor.float()[None, :]).T


def test_many_draws_converge_to_the_full_layer_on_random_inputs():
    """Entry check (b): with m = 2,000,000 draws the re-weighted sum is within 1% of the full layer's output on
    random bounded inputs (calibration: 0.4%; with the draws stopped at all 200 neurons seen, m ~ 17-29k: 5-7%)."""
    act, w_out, prob, ref = _layer()
    counts, m = sample_coreset(prob, None, torch.Generator().manual_seed(0), draws=2_000_000)
    assert m == 2_000_000 and int(counts.sum()) == m
    assert float((_estimate(act, w_out, prob, counts, m) - ref).norm() / ref.norm()) < 0.01


def test_sensitivity_sampling_approximates_better_than_uniform_on_random_inputs():
    """Entry check (c) and the paper's claim on a layer whose neurons differ in norm: at 50 of 200 neurons the
    coreset's relative error on random inputs averages 1.12 over 200 draws, uniform sampling with the same
    re-weighting 1.99 (calibration run); and the coreset is unbiased: the mean of the 200 estimates is within
    7% (the mean's own spread is about 1.12 / sqrt(200) = 8%)."""
    act, w_out, prob, ref = _layer()
    uniform = torch.full_like(prob, 1 / prob.numel())
    errors, mean = {}, {}
    for name, p in (("coreset", prob), ("uniform", uniform)):
        gen = torch.Generator().manual_seed(1)
        est = [_estimate(act, w_out, p, *sample_coreset(p, 50, gen)) for _ in range(200)]
        errors[name] = sum(float((e - ref).norm() / ref.norm()) for e in est) / len(est)
        mean[name] = float((torch.stack(est).mean(0) - ref).norm() / ref.norm())
    assert errors["coreset"] < 0.75 * errors["uniform"], errors
    assert mean["coreset"] < 0.15, mean


def test_sample_until_keep_distinct():
    counts, m = sample_coreset(torch.tensor([0.5, 0.3, 0.2, 0.0], dtype=torch.float64), 3,
                               torch.Generator().manual_seed(0))
    assert int((counts > 0).sum()) == 3 and int(counts.sum()) == m >= 3 and counts[3] == 0


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 40), nn.ReLU(), nn.Linear(40, 20), nn.ReLU(), nn.Linear(20, 3))


def test_method_removes_neurons_reweights_the_next_layer_and_reports_it():
    m = _mlp()
    n_before = sum(p.numel() for p in m.parameters())
    old2, old3 = m[3].weight.detach().clone(), m[5].weight.detach().clone()
    res = get_method("coreset-neuron").run(RunContext(model=m, example_inputs=torch.randn(2, 1, 4, 4),
                                                      target="params=0.5"))
    t, kept = res.telemetry, res.info["kept"]
    assert res.engaged is True and t["groups_sampled"] == 2 and t["groups_reweighted"] == 2
    assert t["sampled"] > t["kept"] == m[1].out_features + m[3].out_features  # draws with repeats
    assert m[1].out_features < 40 and m[3].out_features < 20  # physically smaller
    assert sum(p.numel() for p in m.parameters()) <= 0.5 * n_before
    # every kept column of the next layer is the old column times one factor count / (m * prob) > 0
    for new, old, rows, cols in ((m[3].weight, old2, kept["3"], kept["1"]), (m[5].weight, old3, range(3), kept["3"])):
        ratio = new.detach() / old[list(rows)][:, cols]
        torch.testing.assert_close(ratio, ratio[:1].expand_as(ratio), rtol=1e-5, atol=1e-6)
        assert bool((ratio[0] > 0).all()) and not torch.allclose(ratio[0], torch.ones_like(ratio[0]))


def test_without_reweighting_it_warns_with_the_knob():
    m = _mlp()
    with pytest.warns(MechanismWarning, match="reweight=true"):
        res = get_method("coreset-neuron").run(RunContext(model=m, example_inputs=torch.randn(2, 1, 4, 4),
                                                          target="params=0.5", options={"reweight": False}))
    assert res.engaged is False and res.telemetry["groups_reweighted"] == 0 and m[1].out_features < 40


def test_bad_input_is_a_config_error_and_leaves_the_model():
    m = _mlp()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ConfigError, match=r"sampling.*'sensitivty'.*did you mean 'sensitivity'"):
        get_method("coreset-neuron").run(RunContext(model=m, example_inputs=torch.randn(2, 1, 4, 4),
                                                    target="params=0.5", options={"sampling": "sensitivty"}))
    with pytest.raises(ConfigError, match="target"):
        get_method("coreset-neuron").run(RunContext(model=m, example_inputs=torch.randn(2, 1, 4, 4),
                                                    target="sparsity=0.5"))
    with pytest.raises(ConfigError, match="params=0.01"):  # more than every hidden neuron but one
        get_method("coreset-neuron").run(RunContext(model=m, example_inputs=torch.randn(2, 1, 4, 4),
                                                    target="params=0.01"))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


@pytest.mark.slow
@needs_fashion
def test_small_scale_coreset_beats_uniform_sampling_without_fine_tuning():
    """Entry check, scaled: LeNet-300-100 trained 3 epochs on 6k Fashion-MNIST images; about 90% of the hidden
    neurons removed (target params=0.1: the same fraction of fc1 and fc2), no fine-tuning; coreset sampling
    against uniform sampling with the same re-weighting, 3 seeds each. Calibration run (command:
    pytest -m slow tests/methods/test_coreset_neuron.py): dense 81.95%, coreset 38.83%, uniform 29.87% (mean of
    3 seeds). The entry's "drop <= 2 pt" does not reproduce (a 43 pt drop; docs/methods-weight-4.md); the test
    asserts what holds: coreset >= uniform + 3 pt (entry (a), second half) and well above chance."""
    torch.set_num_threads(1)
    b = pk.data.load("fashion-mnist", batch_size=128, subset=(6000, 2000), val_fraction=0.0, augment=False)
    torch.manual_seed(0)
    dense = pk.models.create("lenet300")
    pk.fit(dense, b.train, pk.TrainConfig(epochs=3, lr=0.05, seed=0, progress=False))
    dense_acc = pk.evaluate(dense, b.test)["accuracy"]
    acc = {}
    for sampling in ("sensitivity", "uniform"):
        runs = []
        for seed in range(3):
            m = pk.models.create("lenet300")
            m.load_state_dict(dense.state_dict())
            get_method("coreset-neuron").run(RunContext(model=m, example_inputs=torch.randn(2, 1, 28, 28),
                                                        target="params=0.1", seed=seed,
                                                        options={"sampling": sampling}))
            runs.append(pk.evaluate(m, b.test)["accuracy"])
        acc[sampling] = sum(runs) / 3
    assert acc["sensitivity"] >= acc["uniform"] + 0.03, (dense_acc, acc)
    assert acc["sensitivity"] >= 0.3, (dense_acc, acc)  # 10 classes: chance is 0.1
