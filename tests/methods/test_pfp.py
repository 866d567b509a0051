"""PFP (Liebenwein et al., ICLR 2020): filters sampled by empirical sensitivity to one global error bound."""
import os

import pytest
import torch

import prunekit as pk
from prunekit.criteria.sampling import empirical_sensitivity, sampling_probabilities
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods import RunContext, get_method, load_all

from method_setups import conv_batches, tiny_convnet, vgg_synthetic

load_all()
FASHION = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
needs_fashion = pytest.mark.skipif(not os.path.exists(FASHION), reason="Fashion-MNIST not installed (make data)")
EX = torch.randn(2, 1, 6, 6)


def _run(model, target="macs=0.5", **options):
    return get_method("pfp").run(RunContext(model=model, example_inputs=EX, target=target, calib=conv_batches(4),
                                            options=options))


def test_a_dead_channel_is_removed_and_the_probabilities_follow_the_sensitivities():
    """tiny_convnet(dead=True): BN channel 1 of the first block sits at -10 before a ReLU, so conv 3 never sees
    it; its sensitivity is 0, it is never sampled, and the kept channels are drawn from p = s / sum(s)."""
    m = tiny_convnet(dead=True)
    x = torch.cat([b[0] for b in conv_batches(4)])
    m.eval()  # the sensitivities are measured in eval mode (BN running statistics)
    with torch.no_grad():
        s, _ = empirical_sensitivity(m[3], m[2](m[1](m[0](x))))
    assert s[1] == 0 and bool((s[[0, 2, 3]] > 0).all())
    res = _run(m, variant="random")
    assert 1 not in res.info["kept"]["0"] and res.engaged is True
    assert m[0].weight.shape[0] == res.info["widths"]["0"] <= 3


def test_deterministic_keeps_the_top_sensitivities_and_random_reweights_the_readers():
    m = tiny_convnet()
    x = torch.cat([b[0] for b in conv_batches(4)])
    m.eval()  # the sensitivities are measured in eval mode (BN running statistics)
    with torch.no_grad():
        s, _ = empirical_sensitivity(m[3], m[2](m[1](m[0](x))))
    det = _run(tiny_convnet(), variant="deterministic")
    k = det.info["widths"]["0"]
    assert det.info["kept"]["0"] == sorted(torch.argsort(sampling_probabilities(s), descending=True)[:k].tolist())
    assert det.telemetry["draws"] == 0 and det.telemetry["groups_reweighted"] == 0
    m_rand, m_plain = tiny_convnet(), tiny_convnet()
    rnd = _run(m_rand)
    plain = _run(m_plain, reweight=False)
    assert rnd.telemetry["groups_reweighted"] >= 1 and rnd.telemetry["draws"] >= rnd.telemetry["unique"] > 0
    assert rnd.info["kept"] == plain.info["kept"]  # same seed, same draws
    assert not torch.allclose(m_rand[3].weight, m_plain[3].weight)  # only the importance weights differ
    hyb = _run(tiny_convnet(), variant="hybrid")
    assert hyb.engaged is True and hyb.info["widths"] == rnd.info["widths"]


def test_one_global_eps_meets_the_target_with_non_uniform_widths():
    m, data = vgg_synthetic(64, 16, 16)
    res = get_method("pfp").run(RunContext(model=m, example_inputs=data.example_inputs(2), target="macs=0.4",
                                           calib=data.calib(2)))
    info = res.info
    rep = info["engine_report"]
    assert rep["macs_after"] <= 0.4 * rep["macs_before"] + 1
    assert info["cost_after"] <= info["budget"]
    assert res.telemetry["epsilon"] > 0 and res.telemetry["groups_cut"] >= 1
    fractions = {k: info["widths"][k] / info["dense_widths"][k] for k in info["widths"]}
    assert len(set(fractions.values())) > 1, fractions  # one eps, different widths per layer


def test_no_cut_at_a_target_the_dense_model_meets_warns_with_the_knob():
    m = tiny_convnet()
    with pytest.warns(MechanismWarning, match="lower the target"):
        res = _run(m, target="macs=1.0")
    assert res.engaged is False and res.telemetry["groups_cut"] == 0


def test_bad_input_is_refused_and_leaves_the_model_as_it_was():
    m = tiny_convnet()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ConfigError, match="random"):
        _run(m, variant="rand")
    with pytest.raises(ConfigError, match="delta"):
        _run(m, delta=2.0)
    with pytest.raises(ConfigError, match="calib"):
        get_method("pfp").run(RunContext(model=m, example_inputs=EX, target="macs=0.5"))
    with pytest.raises(ConfigError, match="macs=0.001"):
        _run(m, target="macs=0.001")
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


@pytest.mark.heavy  # minutes of CPU: make test-heavy
@needs_fashion
def test_small_scale_pfp_trails_uniform_l1_by_under_two_points_after_two_fine_tune_epochs():
    """Entry check (c) on the shipped small VGG (Fashion-MNIST): 60% of the parameters removed (params=0.4), then
    2 fine-tune epochs on 6,000 training images (lr 0.01); PFP (256 sensitivity images, random variant) against
    uniform L1 filter pruning (l1-filter) at the same target. The entry's PFP >= L1 - 0.3 pt does not reproduce
    at this budget. Calibration run (command: pytest -m slow tests/methods/test_pfp.py; 2,000 test images):
    right after the cut (no BN recalibration) PFP 18.50%, L1 17.10%; after 2 epochs PFP 88.30%, L1 89.65%
    (PFP -1.35 pt; docs/methods-filter-5.md). The test asserts what holds: PFP within 2 pt of L1, and both
    recovered far above chance."""
    from prunekit.train.baseline import load_baseline

    torch.set_num_threads(1)
    b = pk.data.load("fashion-mnist", batch_size=128, subset=(6000, 2000), val_fraction=0.0, augment=False)
    acc = {}
    for mid in ("pfp", "l1-filter"):
        m = load_baseline("vgg-small-fashion-mnist")
        res = get_method(mid).run(RunContext(model=m, example_inputs=b.example_inputs(2), target="params=0.4",
                                             calib=b.calib(2)))
        assert res.engaged is True
        cut = pk.evaluate(m, b.test)["accuracy"]
        pk.fit(m, b.train, pk.TrainConfig(epochs=2, lr=0.01, seed=0, progress=False))
        acc[mid] = (cut, pk.evaluate(m, b.test)["accuracy"])
    assert acc["pfp"][1] >= acc["l1-filter"][1] - 0.02, acc
    assert min(acc["pfp"][1], acc["l1-filter"][1]) >= 0.85, acc
