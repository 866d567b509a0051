"""The stripe-wise conv (SWP's "broken" conv): shifted 1x1 convs equal to the masked K x K conv."""
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.surgery.stripe import StripeConv2d, stripe_cost, stripe_mask, to_stripes_


@pytest.mark.parametrize("kw", [dict(kernel_size=3, padding=1), dict(kernel_size=3, stride=2, padding=1),
                                dict(kernel_size=(3, 5), padding=(0, 2), dilation=(2, 1)),
                                dict(kernel_size=5, padding=0, bias=False)])
def test_stripe_decomposition_equals_the_conv_in_float64_before_pruning(kw):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, **kw).double()
    s = StripeConv2d.from_conv(conv)
    x = torch.randn(2, 3, 11, 10, dtype=torch.float64)
    assert s.n_stripes == 5 * conv.kernel_size[0] * conv.kernel_size[1]  # nothing pruned: every stripe is there
    torch.testing.assert_close(s(x), conv(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(s.dense_weight(), conv.weight.detach(), rtol=0, atol=0)


def test_removed_stripes_equal_the_masked_conv_and_cost_counts_kept_stripes_only():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 3, 3, padding=1).double()
    mask = torch.ones(3, 3, 3, dtype=torch.bool)
    mask[0, 0, 0] = mask[0, 2, 1] = False
    mask[1] = False  # filter 1 lost every stripe: it outputs its bias only
    mask[:, 1, 1] = False  # no filter keeps the centre: that offset is not computed at all
    s = StripeConv2d.from_conv(conv, mask)
    masked = nn.Conv2d(4, 3, 3, padding=1).double()
    masked.load_state_dict(conv.state_dict())
    with torch.no_grad():
        masked.weight.mul_(mask[:, None])
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(s(x), masked(x), rtol=0, atol=1e-12)
    assert (1, 1) not in s.offsets and s.n_stripes == int(mask.sum()) == 27 - 9 - 2 - 2  # filter 1, two of filter 0, centres of 0 and 2
    assert stripe_cost(s, 49) == (s.n_stripes * 4 * 49, s.n_stripes * 4 + 3)
    assert torch.equal(stripe_mask(masked), mask)
    # the MAC counter sees only the kept stripes' 1x1 convs (batch of 2, 49 output pixels)
    m = pk.measure(nn.Sequential(s.float()), x.float()).macs
    assert m == s.n_stripes * 4 * 49 * 2


def test_to_stripes_swaps_eligible_convs_and_refuses_grouped():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 3, groups=2))
    x = torch.randn(1, 2, 6, 6)
    ref = net(x)
    new = to_stripes_(net)
    assert list(new) == ["0"] and isinstance(net[0], StripeConv2d) and isinstance(net[2], nn.Conv2d)
    torch.testing.assert_close(net(x), ref)
    with pytest.raises(ConfigError, match=r"fqns=\['3'\].*groups=2"):
        to_stripes_(net, ["3"])


def test_a_model_in_stripe_form_saves_and_loads_to_the_same_outputs_after_channel_pruning(tmp_path):
    def factory():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                             nn.Conv2d(6, 5, 3, stride=2, padding=1, bias=False), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))

    net, x = factory().eval(), torch.randn(2, 2, 8, 8)
    pk.prune_(net, example_inputs=x, sparsity=0.5)  # channels removed first: the stripe convs are narrower
    with torch.no_grad():
        net[0].weight[:, :, 0, :] = 0  # the top row of every filter of the first conv goes
        net[3].weight[1] = 0  # one filter of the second conv loses every stripe
        net[3].weight[0, :, 1, 1] = 0
    to_stripes_(net)
    ref = net(x)
    assert isinstance(net[0], StripeConv2d) and (0, 0) not in net[0].offsets
    pk.save(net, tmp_path / "m.safetensors")
    back = pk.load(tmp_path / "m.safetensors", factory).eval()
    assert isinstance(back[0], StripeConv2d) and isinstance(back[3], StripeConv2d)
    assert back[0].offsets == net[0].offsets and back[3].n_stripes == net[3].n_stripes
    assert (back[3].in_channels, back[3].out_channels) == (net[3].in_channels, net[3].out_channels)
    torch.testing.assert_close(back(x), ref, rtol=0, atol=0)
    for k in range(len(net[3].offsets)):
        assert torch.equal(back[3].index(k), net[3].index(k))
    from prunekit.errors import CheckpointError
    with pytest.raises(CheckpointError, match="'0' is a stripe-form conv in the checkpoint but Linear"):
        pk.load(tmp_path / "m.safetensors", lambda: nn.Sequential(nn.Linear(2, 2)))
