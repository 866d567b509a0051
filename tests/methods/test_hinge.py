"""Hinge (Li et al., CVPR 2020): proximal group sparsity on the columns of A; zero columns prune or decompose."""
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.hinge import ColumnGroups, HingeConv
from prunekit.methods._filter_common import filter_groups

from method_setups import conv_batches, tiny_convnet

load_all()


def _two_convs() -> nn.Sequential:
    """conv1 (1 -> 4 filters) read by a 1x1 conv2 (4 -> 3) = A; column 2 of A has norm 0.05, the others >= 0.5."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 3, 1)).double()
    with torch.no_grad():
        m[1].weight.copy_(torch.tensor([[0.6, 0.0, 0.03, 1.0], [0.0, 0.8, 0.04, 0.0], [0.8, 0.6, 0.0, 1.0]],
                                       dtype=torch.float64).reshape(3, 4, 1, 1))
    return m


def test_a_proximal_step_above_one_column_norm_zeros_exactly_that_column_and_its_filter_goes_exactly():
    """By hand: column norms of A are 1.0, 1.0, 0.05, sqrt(2); t = 0.1 zeros column 2 and scales the others by
    1 - 0.1/||a_j|| (0.9, 0.9, 1 - 0.1/sqrt 2). Then conv1 without filter 2 and A without column 2 compute the
    same output exactly."""
    m = _two_convs()
    x = torch.randn(5, 1, 6, 6, dtype=torch.float64)
    ctx = RunContext(model=m, example_inputs=x[:1], target="macs=0.5")
    cols = ColumnGroups.of(m, filter_groups(m, ctx))
    assert torch.allclose(cols.norms()["0"], torch.tensor([1.0, 1.0, 0.05, 2 ** 0.5], dtype=torch.float64))
    a0 = m[1].weight.detach().clone()
    assert cols.prox_(0.1) == 1
    a = m[1].weight.detach()
    assert torch.equal(a[:, 2], torch.zeros_like(a[:, 2]))
    for j, f in ((0, 0.9), (1, 0.9), (3, 1 - 0.1 / 2 ** 0.5)):
        assert torch.allclose(a[:, j], f * a0[:, j])
    with torch.no_grad():
        y = m(x)
        keep = [0, 1, 3]
        c1 = nn.Conv2d(1, 3, 3, padding=1).double()
        c1.weight.copy_(m[0].weight[keep]); c1.bias.copy_(m[0].bias[keep])
        c2 = nn.Conv2d(3, 3, 1).double()
        c2.weight.copy_(m[1].weight[:, keep]); c2.bias.copy_(m[1].bias)
        assert torch.allclose(c2(c1(x)), y, rtol=0, atol=1e-14)


def test_decomposed_conv_equals_the_conv_and_folding_A_equals_running_them_separately_in_float64():
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 5, 3, padding=1).double()
    x = torch.randn(4, 3, 7, 7, dtype=torch.float64)
    h = HingeConv.from_conv(conv)
    assert h.basis.out_channels == 5 and h.A.weight.shape == (5, 5, 1, 1)
    norms = h.A.weight.detach()[:, :, 0, 0].norm(dim=0)  # = singular values of the flattened filters
    assert torch.allclose(norms, torch.linalg.svdvals(conv.weight.detach().reshape(5, -1)))
    with torch.no_grad():
        assert torch.allclose(h(x), conv(x), atol=1e-12)
        h.A.weight.mul_(torch.randn_like(h.A.weight))  # any A, also after training
        h.A.weight[:, 4] = 0.0
        assert torch.allclose(h.fold()(x), h(x), atol=1e-12)


SMALL_LR = pk.TrainConfig(lr=1e-3, weight_decay=0.0, scheduler="constant", progress=False)


def _planted():
    """tiny_convnet with conv2's input column 1 at norm ~7e-4 (below the paper's threshold 5e-3; the SGD steps
    at lr 1e-3 move it less than the threshold, so the proximal step keeps it at zero)."""
    m = tiny_convnet()
    with torch.no_grad():
        m[3].weight[:, 1] = 1e-4 * torch.sign(m[3].weight[:, 1])
    return m


def test_engaged_at_defaults_zeroes_the_small_column_and_the_cut_removes_that_filter():
    m = _planted()
    res = get_method("hinge").run(RunContext(model=m, example_inputs=torch.randn(2, 1, 6, 6), target="macs=0.7",
                                             train_data=conv_batches(3), train_config=SMALL_LR))
    t = res.telemetry
    assert res.engaged is True and t["zero_columns"] >= 1 and t["prox_steps"] == 3
    assert m[0].out_channels < 4 and res.info["macs_fraction"] <= 0.7
    assert t["removed_channels"] == t["topped_up"] + min(t["zero_columns"], t["removed_channels"])


def test_no_zero_column_warns_with_the_knob():
    m = _planted()
    with pytest.warns(MechanismWarning, match="options.reg"):
        res = get_method("hinge").run(RunContext(model=m, example_inputs=torch.randn(2, 1, 6, 6), target="macs=0.7",
                                                 train_data=conv_batches(3), train_config=SMALL_LR,
                                                 options={"threshold": 0.0, "reg": 0.0}))
    assert res.engaged is False and res.telemetry["zero_columns"] == 0 and res.telemetry["topped_up"] >= 1


def test_the_proximal_steps_stop_once_the_zero_columns_meet_the_target_and_those_columns_stay_zero():
    """A strong reg (10 at lr 1e-2) zeroes every column of tiny_convnet in 8 steps without the stop (MACs 0.07
    of the dense model for a macs=0.7 target); with it the proximal steps end at step 4, where the zero
    columns first meet the target, and those columns are still zero after the 4 steps that follow, so the cut
    takes them alone (topped_up 0) and lands at the target's granularity (0.571), not far below it."""
    cfg = pk.TrainConfig(lr=1e-2, weight_decay=0.0, scheduler="constant", progress=False)
    out = {}
    for stop in (True, False):
        res = get_method("hinge").run(RunContext(model=tiny_convnet(), example_inputs=torch.randn(2, 1, 6, 6),
                                                 target="macs=0.7", train_data=conv_batches(8), train_config=cfg,
                                                 options={"reg": 10.0, "stop_at_target": stop}))
        out[stop] = (res.telemetry, res.info["macs_fraction"])
    (on, f_on), (off, f_off) = out[True], out[False]
    assert on["stopped_at"] == on["prox_steps"] == 4 and off["stopped_at"] is None and off["prox_steps"] == 8
    assert on["zero_columns"] == on["removed_channels"] == 3 and on["topped_up"] == 0
    assert f_on == pytest.approx(0.571, abs=1e-3) and f_off == pytest.approx(0.072, abs=1e-3)
    assert off["zero_columns"] == 10


def _hinge_resnet20():
    """hinge at its defaults on an 8x8 ResNet-20, two random batches (too short to zero a column: it warns)."""
    torch.manual_seed(0)
    m = pk.models.create("resnet20", input_size=8)
    data = [(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))) for _ in range(2)]
    with pytest.warns(MechanismWarning):
        res = get_method("hinge").run(RunContext(model=m, example_inputs=data[0][0][:2], target="macs=0.5",
                                                 train_data=data))
    return m, res


def test_residual_last_convs_are_rank_reduced_not_output_pruned():
    """Entry (d): the convs feeding a residual sum keep their output width and lose basis filters instead."""
    m, res = _hinge_resnet20()
    assert res.info["macs_fraction"] <= 0.5
    blocks = [b for s in (m.layer1, m.layer2, m.layer3) for b in s]
    assert [b.bn2.num_features for b in blocks] == [16] * 3 + [32] * 3 + [64] * 3
    ranks = res.info["ranks"]
    assert len(ranks) >= 9 and res.telemetry["basis_removed"] >= 1
    assert any(r < min(w, 9 * w) for r, w in zip(ranks.values(), [16] * 3 + [32] * 3 + [64] * 3))



def test_a_model_with_split_convs_saves_and_loads_back_to_the_same_outputs(tmp_path):
    m, res = _hinge_resnet20()
    split = [n for n, mod in m.named_modules() if isinstance(mod, HingeConv)]
    assert split and res.telemetry["layers_split"] == len(split)
    pk.save(m, tmp_path / "hinge.safetensors")
    back = pk.load(tmp_path / "hinge.safetensors", lambda: pk.models.create("resnet20", input_size=8))
    assert [n for n, mod in back.named_modules() if isinstance(mod, HingeConv)] == split
    m.eval(), back.eval()
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(back(x), m(x))


def test_bad_input_is_refused_and_leaves_the_model_as_it_was():
    m = tiny_convnet()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    ex = torch.randn(2, 1, 6, 6)
    with pytest.raises(ConfigError, match="train"):
        get_method("hinge").run(RunContext(model=m, example_inputs=ex, target="macs=0.5"))
    with pytest.raises(ConfigError, match="reg"):
        get_method("hinge").run(RunContext(model=m, example_inputs=ex, target="macs=0.5", train_data=conv_batches(2),
                                           options={"reg": -1.0}))
    with pytest.raises(ConfigError, match="prune_epochs"):
        get_method("hinge").run(RunContext(model=m, example_inputs=ex, target="macs=0.5", train_data=conv_batches(2),
                                           prune_epochs=0))
    with pytest.raises(ConfigError, match="target"):
        get_method("hinge").run(RunContext(model=m, example_inputs=ex, target="macs=0.001",
                                           train_data=conv_batches(2)))
    assert type(m[3]) is nn.Conv2d and all(torch.equal(before[k], v) for k, v in m.state_dict().items())
