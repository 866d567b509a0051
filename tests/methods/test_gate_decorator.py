"""Gate Decorator: Taylor importance on gates, global selection, melt exactness, tick-tock run."""

import torch
from method_setups import bundle_ctx
from torch import nn

import prunekit as pk
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods._filter_common import ChannelGates, bn_layers, cut_to_target
from prunekit.methods._regularizers import GateTaylor
from prunekit.methods.gate_decorator import select_lowest_global


def _vgg():
    torch.manual_seed(0)
    return pk.models.create("vgg-small", width=0.25)


def test_planted_zero_gate_scores_exactly_zero_and_is_pruned_first():
    model = _vgg()
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    gates = ChannelGates(model, [f for f, _ in bn_layers(model)])
    with torch.no_grad():
        gates.gates["features.4"][3] = 0.0  # planted: channel 3 of the second conv switched off
    taylor = GateTaylor(gates)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    taylor.on_after_backward(None)
    s = taylor.scores
    assert float(s["features.4"][3]) == 0.0
    assert all(float(v.min()) > 0 for k, v in s.items() if k != "features.4")  # every live gate has a score
    keep = {k: torch.ones_like(v, dtype=torch.bool) for k, v in s.items()}
    assert select_lowest_global(s, keep, 1, min_keep=0.1) == 1
    assert keep["features.4"].tolist() == [True, True, True, False, True, True, True, True]
    gates.remove()


def test_select_lowest_global_respects_the_per_layer_floor():
    scores = {"a": torch.tensor([0.0, 0.1, 0.2, 0.3]), "b": torch.tensor([5.0, 6.0])}
    keep = {k: torch.ones(len(v), dtype=torch.bool) for k, v in scores.items()}
    # floor = ceil(0.5 * width): a keeps 2, b keeps 1 -> at most 3 channels can go although 5 are asked
    assert select_lowest_global(scores, keep, 5, min_keep=0.5) == 3
    assert keep["a"].tolist() == [False, False, True, True] and keep["b"].tolist() == [False, True]


def test_melted_and_sliced_model_equals_gated_model():
    # entry check (a): mask 30% of the gates, melt them into BN and slice: logits equal to 1e-4
    model = _vgg()
    x = torch.randn(8, 1, 28, 28)
    for _, bn in bn_layers(model):  # non-trivial BN statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    gates = ChannelGates(model, [f for f, _ in bn_layers(model)])
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for g in gates.gates.values():
            g.copy_(torch.rand(len(g), generator=gen) + 0.5)
            g[torch.randperm(len(g), generator=gen)[: int(0.3 * len(g))]] = 0.0
    scores = {k: g.detach().clone() for k, g in gates.gates.items()}
    model.eval()
    gated = model(x).detach()
    gates.fold_()
    ctx = RunContext(model=model, example_inputs=x[:1], target="macs=0.99")
    info = cut_to_target(model, ctx, scores, "global")
    assert info["removed_channels"] == sum(int((s == 0).sum()) for s in scores.values())
    assert info["params_after"] < info["params_before"]
    torch.testing.assert_close(model(x), gated, atol=1e-4, rtol=1e-4)


def test_tick_tock_run_reaches_the_mac_target_and_masks_before_the_cut():
    load_all()
    model = _vgg()
    data = pk.data.load("synthetic", batch_size=32, n_train=128, n_test=32, val_fraction=0.0)
    ctx = bundle_ctx(model, data, prune_epochs=2, train_config=pk.TrainConfig(epochs=1, lr=0.05, progress=False),
                     options={"ticks_per_tock": 2, "tick_batches": 2})
    res = get_method("gate-decorator").run(ctx)
    assert res.info["kept_macs_fraction"] <= 0.5
    assert res.info["masked_before_cut"] == res.info["removed_channels"]  # the cut removes what the ticks masked
    assert res.info["ticks"] == 4
    assert not any(m._forward_hooks for m in model.modules())
    # telemetry: 2 tick-tock rounds whose ticks masked every removed channel between them
    assert res.engaged is True and res.telemetry["rounds"] == 2 and res.telemetry["ticks"] == 4
    assert sum(res.telemetry["removed_per_round"]) == res.info["removed_channels"]
    # 2 tocks of 4 batches + 4 ticks of 2 batches on a 4-batch epoch: 2 + 4 * 2 / 4 = 4 epochs of training
    assert res.info["tick_epochs"] == 2.0 and res.info["epochs_trained"] == 4.0


def test_a_floor_of_every_channel_masks_nothing_in_the_ticks_and_warns_with_the_knob():
    import pytest

    from prunekit.errors import MechanismWarning

    load_all()
    data = pk.data.load("synthetic", batch_size=32, n_train=64, n_test=32, val_fraction=0.0)
    ctx = bundle_ctx(_vgg(), data, train_config=pk.TrainConfig(epochs=1, lr=0.05, progress=False),
                     options={"ticks_per_tock": 1, "tick_batches": 1, "min_keep": 0.99})  # floor: all 8-32 kept
    with pytest.warns(MechanismWarning, match="lower options.min_keep or ask for a smaller target"):
        res = get_method("gate-decorator").run(ctx)
    assert res.engaged is False and res.telemetry["removed_per_round"] == [0]
    assert res.info["masked_before_cut"] == 0 and res.info["removed_channels"] > 0  # the cut ranked them all
