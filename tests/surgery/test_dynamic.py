"""The per-input gating block: the gather path computes the masked path's numbers, executed MACs are counted
by hand and agree with the project's MAC counter, and a gated model saves and loads with its selectors."""

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.measure import count_macs
from prunekit.surgery import dynamic as D


def _net():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                      nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                      nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    with torch.no_grad():  # non-trivial BN statistics and shifts
        for bn in (m[1], m[4], m[7]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.bias.uniform_(-0.5, 0.5)
    return m.eval()


PAIRS = [("3", "4"), ("6", "7")]


def _gated(code, config):
    m = _net()
    D.gate_convs_(m, PAIRS, code, config)
    return m.eval()


CONFIGS = {"fbs": (D.FBS, lambda f, c: [c.out_channels // 2]),
           "dsg": (D.DRS, lambda f, c: [c.out_channels // 2, 2, 0]),
           "rnp": (D.RNP, lambda f, c: [4, PAIRS.index((f, str(int(f) + 1))), 8])}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_gather_path_computes_the_masked_paths_outputs_and_macs(name):
    m = _gated(*CONFIGS[name])
    x = torch.randn(5, 1, 6, 6)
    with torch.no_grad():
        D.set_execution(m, "masked")
        dense = m(x)
        macs_masked = D.executed_macs(m, x)
        D.set_execution(m, "gather")
        gathered = m(x)
        macs_gather = D.executed_macs(m, x)
    torch.testing.assert_close(gathered, dense, rtol=1e-5, atol=1e-6)
    assert torch.equal(macs_masked, macs_gather)


def test_skipped_channels_stay_zero_after_bn_double_mask():
    m = _gated(D.FBS, lambda f, c: [2])
    m.train()  # the masked path, BN in training mode with a non-zero shift
    out = {}
    m[3].register_forward_hook(lambda mod, a, o: out.setdefault("y", o))
    m(torch.randn(4, 1, 6, 6))
    keep = m[3].last_keep
    assert (out["y"][~keep] == 0).all() and (keep.sum(1) <= 2).all()


def test_executed_macs_of_one_input_by_hand_and_by_the_projects_counter():
    m = _net()
    D.gate_convs_(m, [("3", "4")], D.FBS, lambda f, c: [2])
    m.eval()
    x = torch.randn(1, 1, 6, 6)
    with torch.no_grad():
        m[0].weight[1] = 0  # conv 0's channel 1: zero weights and BN shift -> exactly 0 after the ReLU
        m[0].bias[1] = 0
        m[1].bias[1] = -5.0
    keep = torch.tensor([[True, False, True, False, False, False]])
    m[3].selector.forward = lambda inp: (keep, torch.ones(1, 6))  # outputs 0 and 2 for this input
    # the gated conv: 2 outputs x 3 non-zero inputs x 3x3 kernel x 6x6 pixels, + the predictor 4 x 6
    hand = 2 * 3 * 9 * 36 + 4 * 6
    macs = D.executed_macs(m, x)
    assert macs.tolist() == [hand]
    # the project's one MAC counter, on the same forward, sees the same convolution (the stubbed selector
    # runs no predictor here, so it counts the conv alone)
    dense_rest = count_macs(_net(), x).total - 4 * 6 * 9 * 36
    assert count_macs(m, x).per_module["3"] == 2 * 3 * 9 * 36
    assert count_macs(m, x).total == dense_rest + 2 * 3 * 9 * 36


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_gated_model_saves_and_loads_with_its_selectors(name, tmp_path):
    m = _gated(*CONFIGS[name])
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    x = torch.randn(3, 1, 6, 6)
    with torch.no_grad():
        before = m(x)
    pk.save(m, str(tmp_path / "m.safetensors"))
    loaded = pk.load(str(tmp_path / "m.safetensors"), D.dynamic_factory(tmp_path / "m.safetensors", _net)).eval()
    assert set(D.gated_units(loaded)) == {"3", "6"}
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), before)


def test_only_dense_convs_are_gated():
    with pytest.raises(ConfigError, match="groups=1"):
        D.GatedConv(nn.Conv2d(4, 4, 3, groups=4), None, nn.Identity(), D.FBS, [2])


def test_topk_and_prefix_masks():
    s = torch.tensor([[0.1, 0.9, 0.5, 0.2]])
    assert D.topk_mask(s, 2).tolist() == [[False, True, True, False]]
    assert D.prefix_mask(torch.tensor([1, 3]), 4).tolist() == [[True, False, False, False], [True, True, True, False]]
