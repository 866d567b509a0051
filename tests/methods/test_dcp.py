"""DCP (Zhuang et al., NeurIPS 2018): greedy channel selection by the gradient of reconstruction + auxiliary loss."""
import copy
import math

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.dcp import dcp_layers, greedy_select

from method_setups import conv_batches, conv_ctx, tiny_convnet

load_all()


def _signal_case():
    """Three input channels read by a Linear(3 -> 2) whose output feeds a classifier Linear(2 -> 2).

    Channel 0 has large energy (+-2) and channel 2 some (+-1), both orthogonal to the label; channel 1 is the
    label itself at amplitude 0.1 and the only thing the classifier reads (weights -+50 on output 1). At W = 0
    the gradient of L_M = 1/(2Q) ||O_b - O||^2 over the input channels has Frobenius norms (2, 0.005, 0.25):
    reconstruction alone picks channel 0. The cross-entropy gradient adds 50 * E[x1 (2y - 1)] = 5 on channel 1
    only, so with lam = 1 the norms are (2, 5.0, 0.25) and DCP picks channel 1."""
    y = torch.tensor([0, 1] * 4)
    x = torch.stack([torch.tensor([2.0, 2, -2, -2] * 2), 0.1 * (2 * y - 1).float(),
                     torch.tensor([1.0, -1, -1, 1] * 2)], 1)
    net = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]]))
        net[1].weight.copy_(torch.tensor([[0.0, -50.0], [0.0, 50.0]]))
        net[1].bias.zero_()
    return net, [(x, y)]


@pytest.mark.parametrize("lam,picked", [(1.0, 1), (0.0, 0)])
def test_the_class_signal_channel_with_little_energy_is_kept_by_dcp_and_dropped_by_reconstruction_only(lam, picked):
    net, batches = _signal_case()
    teacher = copy.deepcopy(net)
    r = greedy_select(net, "0", 1, batches, teacher, lambda out: out, lam=lam, lr=0.01, momentum=0.0)
    assert r["selected"] == [picked]
    assert r["differs"] == [lam > 0]  # with lam = 1 the discrimination term decided the pick
    w = net[0].weight.detach()
    assert torch.count_nonzero(w[:, [c for c in range(3) if c != picked]]) == 0 and w[:, picked].abs().sum() > 0
    with torch.no_grad():
        acc = float((net(batches[0][0]).argmax(1) == batches[0][1]).float().mean())
    assert acc == (1.0 if picked == 1 else 0.5)  # the kept signal channel still classifies every example


def test_greedy_returns_half_the_channels_and_its_loss_never_rises():
    """Entry check (a) on the tiny conv net: conv '3' reads 4 channels, keep ceil(0.5 * 4) = 2; L(W) after each
    greedy step (an added channel, then SGD on the kept ones) is not above the step before."""
    m = tiny_convnet()
    teacher = copy.deepcopy(m)
    batches = conv_batches(4, labels="tercile")
    r = greedy_select(m, "3", math.ceil(0.5 * 4), batches, teacher, lambda out: out)
    assert len(r["selected"]) == 2 == len(set(r["selected"]))
    assert all(b <= a + 1e-9 for a, b in zip(r["loss"], r["loss"][1:])), r["loss"]
    kept = torch.zeros(4, dtype=torch.bool)
    kept[r["selected"]] = True
    assert torch.count_nonzero(m[3].weight.detach()[:, ~kept]) == 0


def test_dcp_layers_are_the_chain_convs_and_the_inner_channels_of_residual_blocks():
    import prunekit as pk

    m = tiny_convnet()
    assert [(d.producer, d.reader) for d in dcp_layers(m, conv_ctx(m, conv_batches(1)))] == [("0", "3"), ("3", "8")]
    r = pk.models.create("resnet20", input_size=8)
    ctx = RunContext(model=r, example_inputs=torch.zeros(2, 1, 8, 8), target="macs=0.6")
    assert [d.producer for d in dcp_layers(r, ctx)] == [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in (0, 1, 2)]


def _run(lam: float):
    m = tiny_convnet()
    data = conv_batches(6, labels="tercile")
    before = sum(p.numel() for p in m.parameters())
    res = get_method("dcp").run(conv_ctx(m, data, options={"lam": lam, "select_images": 24}))
    return m, res, before


def test_engaged_at_defaults_and_the_model_is_physically_smaller_at_the_target():
    import prunekit as pk

    m, res, before = _run(1.0)
    t = res.telemetry
    assert res.engaged is True and t["selections"] == sum(res.info["kept"].values())
    assert 0 < t["discrimination_differs"] <= 1 and 0 <= t["aux_accuracy"] <= 1
    assert res.info["heads"] == ["3"] and res.info["stages"] == [["0"], ["3"]]  # 1 head: P capped at layers - 1
    assert sum(p.numel() for p in m.parameters()) < before
    assert m[0].out_channels == res.info["kept"]["0"] and m[3].out_channels == res.info["kept"]["3"]
    dense = pk.measure(tiny_convnet(), torch.zeros(1, 1, 6, 6))
    assert pk.measure(m, torch.zeros(1, 1, 6, 6)).macs <= 0.5 * dense.macs


def test_reconstruction_only_selection_warns_naming_lam():
    with pytest.warns(MechanismWarning, match="options.lam"):
        _, res, _ = _run(0.0)
    assert res.engaged is False and res.telemetry["discrimination_differs"] == 0 and res.telemetry["selections"] > 0


def test_bad_input_is_refused_and_leaves_the_model_as_it_was():
    m = tiny_convnet()
    data = conv_batches(2)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ConfigError, match="lam"):
        get_method("dcp").run(conv_ctx(m, data, options={"lam": -1.0}))
    with pytest.raises(ConfigError, match="prune_epochs"):
        get_method("dcp").run(conv_ctx(m, data, prune_epochs=0))
    with pytest.raises(ConfigError, match="train"):
        get_method("dcp").run(conv_ctx(m, data, train_data=None))
    with pytest.raises(ConfigError, match="target"):
        get_method("dcp").run(conv_ctx(m, data, target="sparsity=0.5"))
    flat = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(144, 3))  # a reader of 36 per channel
    with pytest.raises(ConfigError, match="no layer"):
        get_method("dcp").run(conv_ctx(flat, data, target="macs=0.9"))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
