"""PFS (Pruning from Scratch): gates on frozen random weights, mean gate pulled to r, global cut, scratch training."""
import pytest
import torch
from torch import nn

from method_setups import conv_ctx, tiny_convnet
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.rethinking import scratch_epochs

load_all()


def _hand_net():
    """fc1 = identity (h0 = relu(x0), h1 = relu(x1)); fc2 reads h0 as evidence for class 1 and h1 against it.

    The label is x0 > 0, so h1 only hurts: cross-entropy lowers its gate and keeps h0's at 1. Both fc1 rows have
    the same norm, so a weight-magnitude criterion cannot tell the two units apart.
    """
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[-3.0, 3.0], [3.0, -3.0]]))
        net[2].bias.copy_(torch.tensor([0.5, -0.5]))
    return net


def _hand_data(n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(16, 2, generator=g)
        out.append((x, (x[:, 0] > 0).long()))
    return out


def test_gates_find_the_harmful_unit_and_the_cut_keeps_the_other_one_bit_identical():
    net, data = _hand_net(), _hand_data()
    ctx = RunContext(model=net, example_inputs=data[0][0][:1], target="macs=0.6", train_data=data,
                     val_data=data[:2], prune_epochs=5, options={"r": 0.5, "scratch_epochs": 0})
    res = get_method("pfs").run(ctx)
    assert res.telemetry["weights_changed"] == 0 and res.engaged is True
    assert res.info["widths"] == {"0": 1}
    # the kept unit is h0: its random (here hand-set) weights survive the cut bit for bit
    assert net[0].weight.tolist() == [[1.0, 0.0]] and net[2].weight.tolist() == [[-3.0], [3.0]]
    gates = res.info["gates"]["0"]
    assert gates[0] == 1.0 and gates[1] < 0.15, gates  # measured [1.0, 0.086]: h0 kept at the clip, h1 driven down


def test_mean_gate_ends_within_005_of_r_with_weights_bit_identical():
    model = tiny_convnet()
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(40)]
    ctx = conv_ctx(model, data, prune_epochs=5, options={"scratch_epochs": 0})
    res = get_method("pfs").run(ctx)
    assert abs(res.telemetry["mean_gate"] - 0.2) <= 0.05, res.telemetry
    assert res.telemetry["weights_changed"] == 0 and res.engaged is True


def test_scratch_b_trains_the_pruned_net_from_a_fresh_draw_for_the_mac_ratio_epochs():
    model = tiny_convnet()
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(4)]
    res = get_method("pfs").run(conv_ctx(model, data, options={"scratch_epochs": 1}))
    assert res.telemetry["scratch_epochs"] == scratch_epochs(1, res.info["dense_macs"], res.info["pruned_macs"]) == 2
    assert res.info["epochs_trained"] == 1 + 2


def test_gates_that_do_not_move_warn_with_the_knob():
    model = tiny_convnet()
    x = torch.randn(8, 1, 6, 6)
    with pytest.warns(MechanismWarning, match="the gates stayed at 1"):
        res = get_method("pfs").run(conv_ctx(model, [(x, torch.randint(0, 3, (8,)))],
                                             options={"lr": 1e-9, "scratch_epochs": 0}))
    assert res.engaged is False and res.telemetry["mean_gate"] > 0.999


def test_refuses_a_model_without_gateable_channels_and_bad_options():
    net = nn.Sequential(nn.Linear(4, 2))
    data = [(torch.randn(4, 4), torch.randint(0, 2, (4,)))]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ConfigError):
        get_method("pfs").run(RunContext(model=net, example_inputs=data[0][0][:1], target="macs=0.6",
                                         train_data=data))
    with pytest.raises(ConfigError, match="r"):
        get_method("pfs").run(RunContext(model=net, example_inputs=data[0][0][:1], target="macs=0.6",
                                         train_data=data, options={"r": 1.5}))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_best_gates_keeps_the_best_validation_epoch_whose_nonzero_fraction_is_at_most_r():
    from types import SimpleNamespace

    from prunekit.methods.pfs import _BestGates
    from prunekit.train.frozen import FrozenChannelGates

    net, data = _hand_net(), _hand_data(n=2)
    gates = FrozenChannelGates(net, {"0": ["0.weight", "0.bias"]})
    best = _BestGates(gates, data, r=0.5)
    state = SimpleNamespace(epoch=0, extra={})
    with torch.no_grad():
        gates.gate("0").copy_(torch.tensor([1.0, 0.3]))  # 2 of 2 non-zero > r: not eligible
    best.on_epoch_end(state)
    assert best.best is None
    with torch.no_grad():
        gates.gate("0").copy_(torch.tensor([1.0, 0.0]))  # 1 of 2 non-zero <= r: kept
    state.epoch = 1
    best.on_epoch_end(state)
    with torch.no_grad():
        gates.gate("0").copy_(torch.tensor([0.0, 1.0]))  # eligible but worse on validation: not kept
    state.epoch = 2
    best.on_epoch_end(state)
    assert best.epoch == 1 and best.best["0"].tolist() == [1.0, 0.0]
