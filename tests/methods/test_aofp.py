"""AOFP (Ding et al., ICML 2019): binary search over halves of a layer's filters by the damage of masking them."""
import numpy as np
import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.aofp import LayerSearch, damage

from method_setups import conv_batches

load_all()
PLANTED = [1, 2, 5, 6]


def planted_net() -> nn.Sequential:
    """conv1 (1 -> 8)-BN-ReLU, conv2 (8 -> 6)-BN-ReLU, pool, linear; conv2's input weights of conv1's filters
    1, 2, 5, 6 are zero: those four filters carry no signal downstream (the entry's planted check)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1),
                      nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    with torch.no_grad():
        m[3].weight[:, PLANTED] = 0
    return m


def _ctx(m, target="macs=0.3", **options):
    data = conv_batches(4)
    return RunContext(model=m, example_inputs=data[0][0][:2], target=target, calib=data, options=options,
                      ignore=["3"])


def test_damage_of_masking_only_planted_filters_is_zero_and_of_a_live_one_is_not():
    """Entry (a): t of a trial masking only planted filters < 1e-6 (here exactly 0); masking filter 0 is not."""
    m = planted_net().eval()
    x = torch.relu(m[1](m[0](torch.randn(8, 1, 6, 6))))
    keep = torch.ones(8)
    keep[PLANTED[:2]] = 0
    assert damage(m[3], x, keep) < 1e-6
    keep = torch.ones(8)
    keep[0] = 0
    assert damage(m[3], x, keep) > 1e-3


def test_layer_search_halves_then_prunes_the_low_damage_half_by_hand():
    """The rule by hand on four filters, k = 2: averages (0.5, 0.3, 0.02, 0.2) at thresh 0.01 -> the 2nd
    lowest (0.2) is not below it, so the space halves to {2, 3}; there k = 1 and filter 2 at 0.005 < 0.01 is
    pruned and the search restarts over the three left."""
    s = LayerSearch(4)
    for masked, t in (([0, 1], 0.4), ([2, 3], 0.11), ([0], 0.6), ([1], 0.2), ([2], -0.07), ([3], 0.29)):
        s.credit(masked, t)  # filter averages: 0 -> 0.5, 1 -> 0.3, 2 -> 0.02, 3 -> 0.2
    np.testing.assert_allclose(s.sums / s.counts, [0.5, 0.3, 0.02, 0.2])
    assert s.decide(0.01) == [] and s.space == [2, 3] and s.halvings == 1
    s.credit([2], 0.005)
    s.credit([3], 0.3)
    assert s.decide(0.01) == [2] and s.pruned == [2] and s.space == [0, 1, 3]


def test_binary_search_finds_the_planted_useless_half():
    """Entry (b), issue 19: with iters_per_half 20 and thresh 0.01 the filters AOFP prunes in conv1 are the
    planted ones first, all four are pruned, and no live filter is (fixed threshold: the search ends there)."""
    m = planted_net()
    res = get_method("aofp").run(_ctx(m, iters_per_half=20, thresh_growth=1.0))
    found = res.info["found"]["0"]
    assert sorted(found) == PLANTED and res.engaged is True
    assert m[0].weight.shape[0] == 4 and m[3].weight.shape[1] == 4
    assert res.telemetry["target_met"] is False  # macs=0.3 needs more than the four useless filters


def test_engaged_at_defaults_meets_the_target_with_a_physical_cut():
    m = planted_net()
    before = sum(p.numel() for p in m.parameters())
    res = get_method("aofp").run(_ctx(m, target="macs=0.8"))
    t = res.telemetry
    assert res.engaged is True and t["target_met"] is True and t["filters_found"] >= 1
    assert set(res.info["found"]["0"]) <= set(PLANTED)
    assert sum(p.numel() for p in m.parameters()) < before
    assert res.info["engine_report"]["params_after"] < res.info["engine_report"]["params_before"]


def test_zero_threshold_finds_nothing_and_warns_with_the_knob():
    m = planted_net()
    with pytest.warns(MechanismWarning, match="options.thresh"):
        res = get_method("aofp").run(_ctx(m, iters_per_half=2, thresh=0.0))
    assert res.engaged is False and res.telemetry["filters_found"] == 0 and m[0].weight.shape[0] == 8


def test_bad_input_is_refused_and_leaves_the_model_as_it_was():
    m = planted_net()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ConfigError, match="iters_per_half"):
        get_method("aofp").run(_ctx(m, iters_per_half=0))
    with pytest.raises(ConfigError, match="thresh_growth"):
        get_method("aofp").run(_ctx(m, thresh_growth=0.5))
    with pytest.raises(ConfigError, match="calib"):
        get_method("aofp").run(RunContext(model=m, example_inputs=torch.randn(2, 1, 6, 6), target="macs=0.5"))
    with pytest.raises(ConfigError, match="thresh"):
        get_method("aofp").run(_ctx(m, thresh=-0.1))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


FASHION = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


@pytest.mark.slow
@pytest.mark.heavy  # several minutes: `make test-heavy`, not the default run
@pytest.mark.skipif(not __import__("os").path.exists(FASHION), reason="Fashion-MNIST not installed (make data)")
def test_small_scale_aofp_finds_the_planted_filters_of_the_trained_small_vgg():
    """Entry check (a)/(b) on the shipped small VGG (Fashion-MNIST): the next layer's input weights of 8 of
    conv2's 32 filters are zeroed; iters_per_half 20, thresh 0.01 (fixed: thresh_growth 1), macs=0.5, every
    layer searched at once on 10 batches of 100 training images. (a) a trial masking only planted filters
    does no damage; (b) the first filters pruned in conv2 are planted ones and all 8 are pruned. Figures:
    docs/methods-filter-6.md (command: pytest -m slow tests/methods/test_aofp.py)."""
    import prunekit as pk
    from prunekit.train.baseline import load_baseline

    torch.set_num_threads(1)
    b = pk.data.load("fashion-mnist", batch_size=100, subset=(1000, 2000), val_fraction=0.0, augment=False)
    calib = list(b.train)
    m = load_baseline("vgg-small-fashion-mnist").eval()
    planted = list(range(0, 32, 4))
    with torch.no_grad():
        m.features[7].weight[:, planted] = 0
        x = m.features[:6](calib[0][0])
    keep = torch.ones(32)
    keep[planted[:4]] = 0
    assert damage(m.features[7], x, keep) < 1e-6  # (a)
    res = get_method("aofp").run(RunContext(model=m, example_inputs=b.example_inputs(2), target="macs=0.5",
                                            calib=calib, options={"iters_per_half": 20, "thresh_growth": 1.0}))
    found = res.info["found"]["features.3"]
    print("aofp small VGG:", res.telemetry, {k: len(v) for k, v in res.info["found"].items()}, found,
          pk.evaluate(m, b.test)["accuracy"])
    assert set(planted) <= set(found)  # (b) all 8 pruned before the run stops
    assert set(found[:len(planted)]) <= set(planted)  # (b) the first ones pruned are planted
