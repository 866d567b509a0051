"""Resolution branches (prunekit.models.resolution): forward, MAC count by hand, engine pruning through them, io."""
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.graph import build_graph
from prunekit.measure import count_macs
from prunekit.models.resolution import MultiResolutionConv, Resample, ResolutionConv, reduced_size


def _net(scale=None):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))
    if scale is not None:
        net[3] = ResolutionConv.from_conv(net[3], scale)
    return net.eval()


def test_scale_one_is_the_plain_conv_exactly():
    conv = _net()[3]
    x = torch.randn(2, 8, 7, 7)
    rc = ResolutionConv.from_conv(conv, 1.0)
    assert torch.equal(rc(x), conv(x))
    assert torch.equal(rc.to_conv()(x), conv(x)) and type(rc.to_conv()) is nn.Conv2d


def test_half_scale_is_average_pool_conv_then_bilinear_upsample():
    conv = _net()[3]
    x = torch.randn(2, 8, 8, 8)
    rc = ResolutionConv.from_conv(conv, 0.5)
    small = nn.functional.avg_pool2d(x, 2)  # bilinear at exactly 1/2 of an even size is the 2x2 mean
    want = nn.functional.interpolate(conv(small), size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(rc(x), want)
    assert rc(torch.randn(1, 8, 7, 7)).shape == (1, 6, 7, 7)  # odd size: 3x3 inside, back to 7x7


def test_strided_conv_output_keeps_the_full_resolution_shape():
    conv = nn.Conv2d(4, 5, 3, stride=2, padding=1)
    x = torch.randn(1, 4, 9, 9)
    assert ResolutionConv.from_conv(conv, 0.5)(x).shape == conv(x).shape == (1, 5, 5, 5)


def test_mac_count_by_hand_on_one_layer():
    x = torch.randn(2, 3, 8, 8)
    # conv0 at 8x8: 2 * 8*8 * 3*3 * 3 * 8 = 27,648; conv3 at 4x4: 2 * 4*4 * 3*3 * 8 * 6 = 13,824 (a quarter of
    # its 55,296 at full size); bilinear taps (4 per output element and channel): down 2*8*4*4*4 = 1,024,
    # up 2*6*8*8*4 = 3,072; linear 2*6*2 = 24
    c = count_macs(_net(0.5), x)
    assert c.per_module == {"0": 27_648, "3.down": 1_024, "3": 13_824, "3.up": 3_072, "8": 24}
    assert c.total == 45_592
    assert count_macs(_net(), x).total == 27_648 + 55_296 + 24


def test_engine_prunes_channels_through_the_reduced_resolution_conv_and_counts_them():
    net, x = _net(0.5), torch.randn(2, 3, 8, 8)
    g = build_graph(net, x)
    producers = {m.fqn for grp in g.groups for m in grp.members if m.role == "producer"}
    assert {"0.weight", "3.weight"} <= producers  # both conv groups found (in and out channels of the branch)
    plan = pk.plan_channels(net, x, {"0": [0, 1], "3": [5]})
    pk.prune_(net, plan)
    assert isinstance(net[3], ResolutionConv) and net[3].in_channels == 6 and net[3].out_channels == 5
    # the same layer by hand with 6 inputs and 5 outputs: resampling scales with the kept channels
    want = 2 * 64 * 9 * 3 * 6 + 2 * 6 * 16 * 4 + 2 * 16 * 9 * 6 * 5 + 2 * 5 * 64 * 4 + 2 * 5 * 2
    assert count_macs(net, x).total == want
    assert net(x).shape == (2, 2)


def test_multi_branch_mixes_by_softmax_and_collapses_to_the_selected_branch():
    conv = _net()[3]
    x = torch.randn(2, 8, 8, 8)
    mb = MultiResolutionConv(conv, (1.0, 0.5))
    with torch.no_grad():
        mb.logits.copy_(torch.tensor([0.0, 2.0]))
    p = torch.softmax(torch.tensor([0.0, 2.0]), 0)
    torch.testing.assert_close(mb(x), p[0] * conv(x) + p[1] * ResolutionConv.from_conv(conv, 0.5)(x))
    assert "logits" not in dict(mb.named_parameters())  # the method trains it, not the model's optimizer
    small = mb.collapse()
    assert isinstance(small, ResolutionConv) and small.scale == 0.5
    with torch.no_grad():
        mb.logits.copy_(torch.tensor([3.0, 0.0]))
    full = mb.collapse()
    assert type(full) is nn.Conv2d and torch.equal(full(x), conv(x))


def test_bad_scales_are_refused():
    with pytest.raises(ConfigError, match=r"scale=1.5.*0 < scale <= 1"):
        ResolutionConv.from_conv(nn.Conv2d(2, 2, 3), 1.5)
    with pytest.raises(ConfigError, match=r"scales=\[1.0, 0.0\]"):
        MultiResolutionConv(nn.Conv2d(2, 2, 3), (1.0, 0.0))
    assert reduced_size(1, 0.5) == 1 and reduced_size(7, 0.5) == 3


def test_identity_resample_costs_nothing():
    net = nn.Sequential(nn.Conv2d(1, 2, 1))
    x = torch.randn(1, 1, 4, 4)
    assert Resample()(x, (4, 4)) is x
    net[0] = ResolutionConv.from_conv(net[0], 1.0)
    assert count_macs(net, x).total == 16 * 2


def test_save_load_round_trip_rebuilds_the_reduced_resolution_conv(tmp_path):
    net, x = _net(0.5), torch.randn(2, 3, 8, 8)
    pk.prune_(net, pk.plan_channels(net, x, {"3": [0, 2]}))
    path = pk.save(net, tmp_path / "m.safetensors")
    back = pk.load(path, lambda: _net()).eval()
    assert isinstance(back[3], ResolutionConv) and back[3].scale == 0.5 and back[3].out_channels == 4
    assert torch.equal(back(x), net(x))
