"""dmc (Gao et al., CVPR 2020): binary channel gates, straight-through estimator, FLOPs-constrained loss."""
import copy

import pytest
import torch

import prunekit as pk
from method_setups import bundle_ctx, conv_batches, conv_ctx, tiny_convnet, vgg_synthetic
from prunekit.errors import MechanismWarning
from prunekit.graph import build_graph
from prunekit.methods import get_method, load_all
from prunekit.methods._filter_common import _graph, filter_groups
from prunekit.methods.dmc import BinaryGates, ChannelCostModel, binarise, resource_loss

load_all()


def test_straight_through_binarisation_is_a_step_forward_and_identity_backward():
    theta = torch.tensor([-0.5, 0.0, 0.3, 2.0], requires_grad=True)
    g = binarise(theta)
    assert g.tolist() == [0.0, 0.0, 1.0, 1.0]
    (g * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert theta.grad.tolist() == [1.0, 2.0, 3.0, 4.0]


def test_with_every_gate_open_the_gated_net_equals_the_dense_net():
    model = tiny_convnet().eval()
    x = torch.randn(4, 1, 6, 6)
    dense = model(x).detach()
    ctx = conv_ctx(model, conv_batches(1))
    gates = BinaryGates(model, filter_groups(model, ctx), init=10.0)
    torch.testing.assert_close(model(x), dense, rtol=0, atol=0)
    with torch.no_grad():
        gates.theta["0"][1] = -1.0  # one closed gate: that channel is zero after its BatchNorm
    gates.new_forward()
    out = model[:2](x)
    assert torch.all(out[:, 1] == 0) and torch.all(out[:, 0] != 0)
    gates.remove()


def test_the_cost_model_at_binary_gates_is_the_engines_exact_cost_of_the_cut():
    model, data = vgg_synthetic(n_train=32, n_test=32, batch_size=32)
    ctx = bundle_ctx(model, data)
    x = ctx.example_inputs
    graph = _graph(model, ctx)
    groups = filter_groups(model, ctx, graph)
    cost = ChannelCostModel(model, graph, groups, "macs")
    assert cost.dense == pytest.approx(graph.macs())
    g = torch.Generator().manual_seed(0)
    removed = {gr.key: torch.randperm(gr.width, generator=g)[: gr.width // 3].sort().values.tolist() for gr in groups}
    kept = {gr.key: torch.tensor(float(gr.width - len(removed[gr.key]))) for gr in groups}
    pruned = copy.deepcopy(model)
    pk.prune_(pruned, pk.plan_channels(pruned, x, removed))
    assert float(cost(kept)) == pytest.approx(build_graph(pruned, x).macs(), rel=1e-9)


def test_resource_loss_is_zero_at_the_budget_and_grows_with_the_gap_on_both_sides():
    t = torch.tensor([50.0, 100.0, 200.0], requires_grad=True)
    r = torch.stack([resource_loss(v, 100.0) for v in t])
    r.sum().backward()
    r = r.detach()
    assert r[1] == 0 and float(r[0]) == pytest.approx(float(r[2])) and float(r[2]) == pytest.approx(0.6931, abs=1e-4)
    assert t.grad[0] < 0 < t.grad[2]  # under the budget the gates are pushed open, over it closed


def _run(**options):
    model, data = vgg_synthetic(n_train=128, n_test=32, batch_size=16)
    ctx = bundle_ctx(model, data, prune_epochs=2, train_config=pk.TrainConfig(epochs=1, lr=0.05, progress=False),
                     options={"gate_lr": 1.0, **options})
    dense = build_graph(model, ctx.example_inputs).macs()
    res = get_method("dmc").run(ctx)
    return res, build_graph(model, ctx.example_inputs).macs() / dense


def test_gates_close_under_the_constraint_and_the_cut_meets_the_target():
    res, kept = _run()
    t = res.telemetry
    assert res.engaged is True and sum(t["gates_off"].values()) > 0
    assert kept <= 0.5 + 1e-9
    assert t["cost_curve"][0] == 1.0 and min(t["cost_curve"]) < 1.0
    assert t["constraint_gap"] == pytest.approx(t["gated_cost"] - 0.5)


def test_without_the_resource_term_no_gate_closes_and_a_warning_names_the_knob():
    with pytest.warns(MechanismWarning, match="raise options.strength"):
        res, kept = _run(strength=0.0, gate_lr=1e-4)
    assert res.engaged is False and sum(res.telemetry["gates_off"].values()) == 0
    assert res.telemetry["topped_up"] > 0 and kept <= 0.5 + 1e-9  # the target is met by the top-up alone
