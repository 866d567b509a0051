"""SWP (Meng et al., NeurIPS 2020): the Filter Skeleton, its update rule, the cut and the stripe export."""
import copy

import pytest
import torch
from torch import nn
from method_setups import conv_batches, conv_ctx, tiny_convnet

import prunekit as pk
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.masks import get_masks
from prunekit.methods import RunContext, get_method
from prunekit.masks import install_masks_
from prunekit.methods.swp import FilterSkeleton, _remove_empty_filters, _stripe_masks, skeleton_convs
from prunekit.surgery.stripe import StripeConv2d, to_stripes_


def test_one_zero_skeleton_entry_equals_zeroing_that_stripe_of_that_filter():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    ref = copy.deepcopy(conv)
    FilterSkeleton(nn.Sequential(conv), {"0": None}, alpha=0.0, delta=0.01)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(conv(x), ref(x), rtol=0, atol=0)  # FS starts at 1: the conv is unchanged
    with torch.no_grad():
        conv.parametrizations.weight[0].fs[2, 0, 1] = 0
        ref.weight[2, :, 0, 1] = 0  # weight[:, :, i, j] of that filter only
    torch.testing.assert_close(conv(x), ref(x), rtol=0, atol=1e-14)


def test_update_adds_alpha_sign_thresholds_below_delta_and_masks_bn_of_empty_filters():
    net = nn.Sequential(nn.Conv2d(1, 2, (1, 3)), nn.BatchNorm2d(2))
    sk = FilterSkeleton(net, {"0": "1"}, alpha=0.1, delta=0.01)
    fs = sk.skeletons["0"]
    with torch.no_grad():
        fs.copy_(torch.tensor([[[0.5, 0.005, -0.3]], [[0.009, -0.002, 0.0]]]))
    fs.grad = torch.tensor([[[1.0, 1.0, 1.0]], [[2.0, 2.0, 2.0]]])
    net[1].weight.grad = torch.ones(2)
    sk.update()
    # kept entries: grad + 0.1 * sign(FS); entries with |FS| < 0.01 set to 0 with a zero gradient
    torch.testing.assert_close(fs.detach(), torch.tensor([[[0.5, 0.0, -0.3]], [[0.0, 0.0, 0.0]]]), rtol=0, atol=0)
    torch.testing.assert_close(fs.grad, torch.tensor([[[1.1, 0.0, 0.9]], [[0.0, 0.0, 0.0]]]))
    # filter 1 has no stripe left: its BN scale and shift (and their gradients) are masked, filter 0's are not
    assert net[1].weight.tolist() == [1.0, 0.0] and net[1].bias.tolist() == [0.0, 0.0]
    assert net[1].weight.grad.tolist() == [1.0, 0.0]


def test_removing_empty_filters_after_the_fold_is_exact():
    model = tiny_convnet()
    data = conv_batches(2)
    ctx = conv_ctx(model, data)
    sk = FilterSkeleton(model, skeleton_convs(model, ctx.example_inputs), alpha=0.0, delta=0.01)
    with torch.no_grad():
        sk.skeletons["0"][1] = 0.001  # filter 1 of the first conv: every stripe below delta
        sk.skeletons["3"][4, 0] = 0.0  # a partial skeleton: filter 4 of the second conv loses one row
    sk.update()
    kept = sk.fold_()
    model.eval()
    x = data[0][0]
    before = model(x).detach()
    summary, rows = _remove_empty_filters(model, ctx, kept)
    assert model[0].out_channels == 3 and model[3].in_channels == 3 and model[3].out_channels == 6
    assert summary["removed_channels"] == 1 and rows == {"0": [1]}
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)


def _run(model, data, **options):
    ctx = conv_ctx(model, data, options=options, prune_epochs=2)
    return get_method("swp").run(ctx)


def test_skeleton_push_zeroes_stripes_and_the_cut_removes_the_emptied_filters():
    # 20 steps at lr 0.1, momentum 0.9: alpha * lr = 0.01 per step stays inside the +-delta band, so the sign
    # push lands entries there instead of jumping over it; on random labels nothing holds a stripe up
    model, data = tiny_convnet(), conv_batches(10)
    res = _run(model, data, alpha=0.1, delta=0.1)
    t = res.telemetry
    assert res.engaged is True and t["stripes_zeroed_fraction"] == 1.0
    assert t["filters_removed"] == 3 + 5 and model[0].out_channels == 1 and model[3].out_channels == 1  # one kept


def test_stripe_export_of_a_cut_model_gives_the_same_logits():
    model, data = tiny_convnet(), conv_batches(2)
    ctx = conv_ctx(model, data)
    convs = skeleton_convs(model, ctx.example_inputs)
    sk = FilterSkeleton(model, convs, alpha=0.0, delta=0.01)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for fs in sk.skeletons.values():  # about half the stripes below delta, filter 2 of each conv emptied
            fs.mul_((torch.rand(fs.shape, generator=g) < 0.5).to(fs.dtype) * 0.995 + 0.005)
            fs[2] = 0.0
    sk.update()
    kept = sk.fold_()
    _remove_empty_filters(model, ctx, kept)
    install_masks_(model, _stripe_masks(model, convs))
    model.eval()
    twin = copy.deepcopy(model)
    pk.finalize_(twin)
    new = to_stripes_(twin)  # the shifted 1x1 form of every conv
    assert set(new) == {"0", "3"} and all(isinstance(m, StripeConv2d) for m in new.values())
    assert sum(m.n_stripes for m in new.values()) == sum(int(k.sum()) for k in kept.values())
    assert 0 < sum(m.n_stripes for m in new.values()) < 0.6 * (4 + 6) * 9
    x = data[0][0]
    torch.testing.assert_close(twin(x), model(x), rtol=0, atol=1e-5)


def test_no_push_no_zero_stripes_warns_naming_alpha():
    model, data = tiny_convnet(), conv_batches(2)
    with pytest.warns(MechanismWarning, match="raise options.alpha"):
        res = _run(model, data, alpha=0.0, delta=0.0)
    assert res.engaged is False and res.telemetry["stripes_zeroed_fraction"] == 0


def test_model_without_kxk_convs_is_refused_and_left_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = RunContext(model=model, example_inputs=torch.randn(2, 1, 6, 6), target="macs=0.5",
                     train_data=conv_batches(1), prune_epochs=1)
    with pytest.raises(ConfigError, match="swp needs Conv2d layers with a kernel larger than 1x1"):
        get_method("swp").run(ctx)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
