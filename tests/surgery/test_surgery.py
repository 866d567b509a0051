import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.measure.macs import count_macs
from prunekit.errors import PruneError
from prunekit.graph import build_graph
from prunekit.surgery import remove_channels_
from prunekit.testing import assert_equivalent, models, zero_removed_

EXACT = list(models())


def _double(model, x):
    model = model.double()
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        x = x.double()
    return model, x


def _randomise_bn(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


@pytest.mark.parametrize("name", EXACT)
@pytest.mark.parametrize("criterion", ["l1", "random"])
def test_pruned_equals_masked_twin_and_counts_match_prediction(name, criterion):
    model, x = _double(*models()[name]())
    _randomise_bn(model)
    plan = pk.plan(model, x, sparsity=0.5, criterion=criterion)
    twin = copy.deepcopy(model)
    zero_removed_(twin, plan)
    report = pk.prune_(model, plan)
    assert_equivalent(twin, model, x, atol=1e-10, rtol=1e-8)
    assert report.params_after == plan.predicted["params_after"] == sum(p.numel() for p in model.parameters())
    assert report.params_after < report.params_before
    assert count_macs(model, x).total == plan.predicted["macs_after"] == report.macs_after


def test_attributes_follow_the_new_shapes():
    model, x = models()["depthwise"]()
    pk.prune_(model, example_inputs=x, sparsity=0.5)
    assert model.pw1.out_channels == 4 and model.bn1.num_features == 4
    assert model.dw.in_channels == 4 and model.dw.groups == 4 and model.dw.out_channels == 8
    assert model.pw2.in_channels == 8 and model.fc.in_features == 3
    model, x = models()["lstm"]()
    pk.prune_(model, example_inputs=x, sparsity=0.5)
    assert model.rnn.hidden_size == 5 and model.rnn.weight_ih_l0.shape == (20, 6)
    model, x = models()["grouped"]()
    pk.prune_(model, example_inputs=x, sparsity=0.5)
    assert model.g.groups == 2 and model.gn.num_groups == 2 and model.gn.num_channels == 6


def test_gradients_and_optimizer_state_are_sliced_and_training_continues():
    model, x = models()["residual"]()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(x).sum().backward()
    opt.step()
    ref_state = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in model.parameters()}
    ref_a = model.a.weight.detach().clone()
    plan = pk.plan(model, x, sparsity=0.5)
    cut = {m["dim"]: m["indices"] for g in plan.groups for m in g.members if m["fqn"] == "a.weight"}
    keep0 = [i for i in range(6) if i not in cut.get(0, [])]
    keep1 = [i for i in range(8) if i not in cut.get(1, [])]
    assert len(keep0) == 3 and len(keep1) == 4
    pk.prune_(model, plan, optimizer=opt)
    st = opt.state[model.a.weight]
    assert st["exp_avg"].shape == model.a.weight.shape == model.a.weight.grad.shape == (3, 4, 3, 3)
    torch.testing.assert_close(st["exp_avg"], ref_state[id(model.a.weight)]["exp_avg"][keep0][:, keep1])
    torch.testing.assert_close(model.a.weight.detach(), ref_a[keep0][:, keep1])
    opt.zero_grad()
    model(x).sum().backward()
    opt.step()  # shapes of state, grads and params agree
    assert torch.isfinite(model.a.weight).all()


def test_failure_restores_model_and_optimizer_exactly():
    model, x = models()["chain"]()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(x).sum().backward()
    opt.step()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mom = {id(p): opt.state[p]["momentum_buffer"].clone() for p in model.parameters()}
    attrs = (model.conv1.out_channels, model.bn1.num_features, model.conv2.in_channels)
    plan = pk.plan(model, x, sparsity=0.5)
    graph = plan._graph

    def boom(mod, args):
        raise RuntimeError("injected failure")

    h = model.fc.register_forward_pre_hook(boom)
    removal = {pg.id: pg.channels for pg in plan.groups if pg.channels}
    with pytest.raises(PruneError, match="injected failure") as e:
        remove_channels_(model, graph, removal, optimizer=opt, example_inputs=x)
    h.remove()
    assert e.value.op == "validation forward"
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(mom[id(p)], opt.state[p]["momentum_buffer"]) for p in model.parameters())
    assert (model.conv1.out_channels, model.bn1.num_features, model.conv2.in_channels) == attrs


def test_failure_inside_a_fixer_names_the_module():
    from prunekit.surgery import modules as fx

    model, x = models()["chain"]()
    plan = pk.plan(model, x, sparsity=0.5)

    def bad(m, ctx):
        raise ValueError("fixer broke")

    fx.FIXERS.append((nn.BatchNorm2d, bad))
    try:
        with pytest.raises(PruneError, match="fixer broke") as e:
            pk.prune_(model, plan)
    finally:
        fx.FIXERS.pop()
    assert e.value.fqn in ("bn1", "bn2") and "BatchNorm2d" in e.value.op
    assert model.conv1.weight.shape[0] == 8 and model.bn1.num_features == 8
