"""CCP (Peng et al., ICML 2019): per-layer 0-1 quadratic channel selection with pairwise loss terms."""
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.ccp import first_order_selection, gate_terms, objective, solve_qp
from prunekit.methods._filter_common import filter_groups

from method_setups import conv_batches, tiny_convnet

load_all()


@pytest.mark.parametrize("seed", range(6))
def test_solver_matches_brute_force_over_all_70_subsets_of_8_choose_4(seed):
    """Entry check (a): an 8-channel layer keeping 4; u and s from random per-example gate terms
    (s = mean t t^T / 2, positive semidefinite, as the method builds it)."""
    rng = np.random.default_rng(seed)
    t = rng.normal(size=(20, 8)) + rng.normal(size=(20, 1)) * rng.normal(size=8)  # correlated channels
    u, s = -t.mean(0), t.T @ t / (2 * len(t))
    subsets = list(itertools.combinations(range(8), 4))
    assert len(subsets) == 70
    best = min(objective(p, u, s) for p in subsets)
    pruned, _ = solve_qp(u, s, 4)
    assert len(pruned) == 4 and objective(pruned, u, s) == pytest.approx(best, abs=1e-12)


def test_pairwise_terms_keep_one_of_two_correlated_channels_where_first_order_prunes_both():
    """By hand. Per-example gate terms of three channels (rows: examples): channels 0 and 1 move together,
    channel 2 is independent of them. u = -mean t = (-0.2, -0.2, 0); s = mean t t^T / 2 has
    s00 = s11 = s01 = 0.52, s22 = 0.5, s02 = s12 = 0. Pruning two: {0,1} costs -0.4 + 4 * 0.52 = 1.68,
    {0,2} and {1,2} cost -0.2 + 0.52 + 0.5 = 0.82. Independent (first-order) scoring prunes the two lowest
    u -- both correlated channels -- and CCP prunes one of them with channel 2."""
    t = np.array([[1, 1, 1], [-1, -1, 1], [1, 1, -1], [-1, -1, -1]], dtype=float)
    t[:, :2] += 0.2
    u, s = -t.mean(0), t.T @ t / (2 * len(t))
    np.testing.assert_allclose(u, [-0.2, -0.2, 0.0], atol=1e-12)
    np.testing.assert_allclose(s, [[0.52, 0.52, 0], [0.52, 0.52, 0], [0, 0, 0.5]], atol=1e-12)
    fo = first_order_selection(u, 2)
    assert fo.tolist() == [0, 1] and objective(fo, u, s) == pytest.approx(1.68)
    pruned, _ = solve_qp(u, s, 2)
    assert 2 in pruned.tolist() and len(set(pruned.tolist()) & {0, 1}) == 1
    assert objective(pruned, u, s) == pytest.approx(0.82)


def test_gate_terms_are_per_example_gradient_products_at_the_bn_output():
    """u_i = -mean_n t_i^n and s_ij = mean t_i t_j / 2, t_i^n = sum over positions of z dL_n/dz at the BN
    output, checked against autograd example by example."""
    m = tiny_convnet()
    data = conv_batches(2)
    ctx = RunContext(model=m, example_inputs=data[0][0][:2], target="macs=0.5")
    groups = filter_groups(m, ctx)
    terms = gate_terms(m, groups, data)
    key = next(g.key for g in groups if g.bns == ["1"])
    ts = []
    m.eval()
    for x, y in data:
        for n in range(len(x)):
            feats = {}
            def keep(mod, i, o):
                o.retain_grad()
                feats["z"] = o

            h = m[1].register_forward_hook(keep)
            loss = nn.functional.cross_entropy(m(x[n:n + 1]), y[n:n + 1])
            loss.backward()
            h.remove()
            z = feats["z"]
            ts.append((z * z.grad).sum((0, 2, 3)).detach().double().numpy())
            m.zero_grad()
    t = np.stack(ts)
    np.testing.assert_allclose(terms[key][0], -t.mean(0), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(terms[key][1], t.T @ t / (2 * len(t)), rtol=1e-5, atol=1e-9)


def trained_convnet(steps: int = 50) -> nn.Sequential:
    """The tiny conv net after ``steps`` SGD steps on learnable labels: CCP's expansion is about a trained
    network (near a minimum the first-order terms are small and the pairwise ones decide; on the untrained
    net the two selections coincide)."""
    m, data = tiny_convnet(), conv_batches(8, labels="tercile")
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    for i in range(steps):
        x, y = data[i % 8]
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    return m


def _run(model, target="macs=0.5", **options):
    data = conv_batches(4, labels="tercile")
    return get_method("ccp").run(RunContext(model=model, example_inputs=data[0][0][:2], target=target,
                                            calib=data, options=options))


def test_engaged_at_defaults_and_the_cut_is_physical():
    m = trained_convnet()
    before = sum(p.numel() for p in m.parameters())
    res = _run(m)
    t = res.telemetry
    assert res.engaged is True and t["channels_differ"] >= 1 and t["objective_ccp"] < t["objective_first_order"]
    assert sum(p.numel() for p in m.parameters()) < before and res.info["pruned_macs"] <= 0.5 * res.info["dense_macs"]


def test_first_order_only_warns_with_the_knob():
    m = trained_convnet()
    with pytest.warns(MechanismWarning, match="options.pairwise"):
        res = _run(m, pairwise=False)
    assert res.engaged is False and res.telemetry["channels_differ"] == 0


def test_bad_input_is_refused_and_leaves_the_model_as_it_was():
    m = tiny_convnet()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ConfigError, match="allocation"):
        _run(m, allocation="global")
    with pytest.raises(ConfigError, match="images"):
        _run(m, images=0)
    with pytest.raises(ConfigError, match="calib"):
        get_method("ccp").run(RunContext(model=m, example_inputs=torch.randn(2, 1, 6, 6), target="macs=0.5"))
    with pytest.raises(ConfigError, match="target"):
        _run(m, target="macs=0.001")
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


FASHION = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").path.exists(FASHION), reason="Fashion-MNIST not installed (make data)")
def test_small_scale_ccp_objective_and_accuracy_against_first_order_selection_on_small_vgg():
    """Entry check (b) on the shipped small VGG (Fashion-MNIST): half the channels of every layer
    (macs=0.25 with the uniform allocation), terms from 1,000 training images, no fine-tuning. The CCP
    selection's quadratic objective is <= the first-order-only selection's (pairwise=False), and its
    accuracy >= the first-order selection's - 0.3 pt. Figures: docs/methods-filter-6.md (command:
    pytest -m slow tests/methods/test_ccp.py)."""
    import prunekit as pk
    from prunekit.train.baseline import load_baseline

    torch.set_num_threads(1)
    b = pk.data.load("fashion-mnist", batch_size=100, subset=(1000, 2000), val_fraction=0.0, augment=False)
    calib = list(b.train)
    acc, tel = {}, {}
    for pairwise in (True, False):
        m = load_baseline("vgg-small-fashion-mnist")
        ctx = RunContext(model=m, example_inputs=b.example_inputs(2), target="macs=0.25", calib=calib,
                         options={"pairwise": pairwise})
        if pairwise:
            res = get_method("ccp").run(ctx)
        else:
            with pytest.warns(MechanismWarning):
                res = get_method("ccp").run(ctx)
        acc[pairwise], tel[pairwise] = pk.evaluate(m, b.test)["accuracy"], res.telemetry
    print("ccp small VGG:", acc, tel)
    assert tel[True]["objective_ccp"] <= tel[True]["objective_first_order"] + 1e-12
    assert tel[True]["objective_first_order"] == pytest.approx(tel[False]["objective_ccp"])
    assert acc[True] >= acc[False] - 0.003, acc
