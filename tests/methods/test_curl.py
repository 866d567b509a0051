"""CURL (Luo & Wu, CVPR 2020): KL-divergence channel scores, residual-stream channels masked together."""
import copy
import os
import time

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.curl import kl_scores
from prunekit.methods._filter_common import filter_groups
from prunekit.train.baseline import load_baseline

from method_setups import conv_batches, tiny_convnet

load_all()


def _switched_off():
    """tiny_convnet with BN channel 1 of the first block at gamma = beta = 0 (it already outputs 0)."""
    m = tiny_convnet()
    with torch.no_grad():
        m[1].weight[1] = 0.0
        m[1].bias[1] = 0.0
    m.eval()
    return m


def test_a_channel_with_zero_gamma_and_beta_scores_exactly_zero_and_ranks_lowest():
    """Entry (a): masking a channel that is already off leaves the output distribution identical: KL = 0
    exactly, below every other channel (all of which change the output, KL > 0)."""
    m = _switched_off()
    x = torch.randn(2, 1, 6, 6)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    s = kl_scores(m, filter_groups(m, RunContext(model=m, example_inputs=x, target="macs=0.5")), conv_batches(4))
    assert float(s["0"][1]) == 0.0
    others = torch.cat([s["0"][[0, 2, 3]], s["3"]])
    assert bool((others > 0).all())
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # scoring restores every mask
    res = get_method("curl").run(RunContext(model=m, example_inputs=x, target="macs=0.8", calib=conv_batches(4),
                                            train_data=conv_batches(2), options={"finetune_epochs": 0}))
    assert 1 in res.info["removed"]["0"] and res.engaged is True


def _masked_like(model, removed, ctx):
    """A copy of ``model`` with the removed channels masked the paper's way: gamma = beta = 0 in every BN of
    their group."""
    m = copy.deepcopy(model)
    mods = dict(m.named_modules())
    with torch.no_grad():
        for g in filter_groups(m, ctx):
            for b in g.bns:
                for c in removed.get(g.key, []):
                    mods[b].weight[c] = 0.0
                    mods[b].bias[c] = 0.0
    return m.eval()


def test_residual_stream_channels_are_removed_consistently_and_the_pruned_net_equals_the_masked_net():
    """Entry (b) on a ResNet-20 (8x8 inputs): every BN writing into a stage's stream (the stem or shortcut BN and
    each block's bn2) keeps one index set, some stream channels go, and the pruned net computes what the dense
    net with those channels masked (gamma = beta = 0) computes."""
    torch.manual_seed(0)
    m = pk.models.create("resnet20", input_size=8)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(2)]
    x = data[0][0]
    ctx = RunContext(model=m, example_inputs=x[:2], target="macs=0.4")
    m.eval()
    dense = copy.deepcopy(m)
    res = get_method("curl").run(RunContext(model=m, example_inputs=x[:2], target="macs=0.4", calib=data,
                                            train_data=data, options={"finetune_epochs": 0}))
    t = res.telemetry
    assert res.engaged is True and t["residual_channels_scored"] == 16 + 32 + 64
    stream = [g for g in filter_groups(dense, ctx) if len(g.convs) > 1]
    assert len(stream) == 3 and sum(len(res.info["removed"].get(g.key, [])) for g in stream) >= 1
    for s, w in ((m.layer1, 16), (m.layer2, 32), (m.layer3, 64)):
        widths = {b.bn2.num_features for b in s} | {s[-1].bn2.weight.shape[0]}
        assert len(widths) == 1
    assert m.bn1.num_features == m.layer1[0].bn2.num_features
    assert m.layer2[0].shortcut[1].num_features == m.layer2[0].bn2.num_features
    masked = _masked_like(dense, res.info["removed"], ctx)
    m.eval()
    with torch.no_grad():
        assert torch.allclose(m(x), masked(x), atol=1e-5)
    assert res.info["kept_macs_fraction"] <= 0.4


def test_engaged_at_defaults_with_the_kd_fine_tune():
    m = tiny_convnet()
    res = get_method("curl").run(RunContext(model=m, example_inputs=torch.randn(2, 1, 6, 6), target="macs=0.5",
                                            calib=conv_batches(4), train_data=conv_batches(3)))
    t = res.telemetry
    assert res.engaged is True and t["channels_scored"] == 10 and t["kl_max"] > t["kl_median"] > 0
    assert t["kd_steps"] == 3 * 5 and res.info["proxy_images"] == 32  # 24 training images in 3 batches, 5 epochs


def test_outputs_blind_to_every_channel_warn_with_the_knob():
    m = tiny_convnet()
    with torch.no_grad():
        m[8].weight.zero_()
    with pytest.warns(MechanismWarning, match="options.proxy_images"):
        res = get_method("curl").run(RunContext(model=m, example_inputs=torch.randn(2, 1, 6, 6), target="macs=0.5",
                                                calib=conv_batches(2), train_data=conv_batches(2),
                                                options={"finetune_epochs": 0}))
    assert res.engaged is False and res.telemetry["kl_max"] == 0.0


def test_bad_input_is_refused_and_leaves_the_model_as_it_was():
    m = tiny_convnet()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    ex = torch.randn(2, 1, 6, 6)
    with pytest.raises(ConfigError, match="calib"):
        get_method("curl").run(RunContext(model=m, example_inputs=ex, target="macs=0.5", train_data=conv_batches(2)))
    with pytest.raises(ConfigError, match="train"):
        get_method("curl").run(RunContext(model=m, example_inputs=ex, target="macs=0.5", calib=conv_batches(2)))
    with pytest.raises(ConfigError, match="proxy_images"):
        get_method("curl").run(RunContext(model=m, example_inputs=ex, target="macs=0.5", calib=conv_batches(2),
                                          train_data=conv_batches(2), options={"proxy_images": 0}))
    with pytest.raises(ConfigError, match="kd_alpha"):
        get_method("curl").run(RunContext(model=m, example_inputs=ex, target="macs=0.5", calib=conv_batches(2),
                                          train_data=conv_batches(2), options={"kd_alpha": 0.0}))
    with pytest.raises(ConfigError, match="target"):
        get_method("curl").run(RunContext(model=m, example_inputs=ex, target="macs=0.001", calib=conv_batches(2),
                                          train_data=conv_batches(2)))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


FASHION = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


@pytest.mark.heavy  # minutes of CPU: make test-heavy
@pytest.mark.skipif(not os.path.exists(FASHION), reason="Fashion-MNIST not installed (make data)")
def test_small_scale_kd_on_1000_images_matches_plain_ce_within_1pt_and_both_recover_the_cut():
    """Entry check (c) on the shipped ResNet-20 (Fashion-MNIST): the CURL cut to macs=0.4 (the entry's -60%) on
    256 proxy images, then 5 epochs on the same 1000 training images (100 per class), either the method's KD
    fine-tune from the dense net (kd_alpha 0.9, T 4) or plain cross-entropy (lr 0.01, cosine). The two
    fine-tunes start from one cut (the scores are computed once). The entry's claim (c), KD >= CE + 1 pt, did not
    reproduce: calibration run (command: pytest -m slow tests/methods/test_curl.py, shared 2-core machine, 2,000
    test images): right after the cut 20.45%, KD 89.35%, CE 89.25% (+0.10 pt); 448 channels scored (112 of the
    residual streams) in 334 s. The asserts are what is true: both fine-tunes recover the cut by > 50 pt and KD
    is within 1 pt of CE (the entry's +1 pt would fail the upper bound)."""
    torch.set_num_threads(1)
    b = pk.data.load("fashion-mnist", batch_size=100, subset=(6000, 2000), val_fraction=0.0, augment=False)
    few = b.per_class(100, batch_size=100)
    tc = pk.TrainConfig(lr=0.01, progress=False)
    m = load_baseline("resnet20-fashion-mnist")
    dense = copy.deepcopy(m).eval()
    t0 = time.perf_counter()
    res = get_method("curl").run(RunContext(model=m, example_inputs=b.example_inputs(2), target="macs=0.4",
                                            calib=b.calib(3, batch_size=100), train_data=few, train_config=tc,
                                            options={"finetune_epochs": 0}))
    secs = time.perf_counter() - t0
    acc = {"cut": pk.evaluate(m, b.test)["accuracy"]}
    kd, ce = copy.deepcopy(m), copy.deepcopy(m)
    pk.train.fit(kd, few, tc.replace(epochs=5, kd_alpha=0.9), teacher=dense)
    pk.train.fit(ce, few, tc.replace(epochs=5))
    acc["kd"], acc["ce"] = pk.evaluate(kd, b.test)["accuracy"], pk.evaluate(ce, b.test)["accuracy"]
    print("curl slow check", acc, res.telemetry, f"scoring {secs:.0f} s")
    assert res.engaged is True and res.info["kept_macs_fraction"] <= 0.4
    assert min(acc["kd"], acc["ce"]) >= acc["cut"] + 0.5, acc
    assert abs(acc["kd"] - acc["ce"]) < 0.01, acc  # entry (c) claims kd >= ce + 0.01: not reproduced
