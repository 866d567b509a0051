import numpy as np
import pytest
import torch
from torch import nn

from prunekit.graph import build_graph, register_handler
from prunekit.graph.trace import _MODULE_HANDLERS, _OP_HANDLERS
from prunekit.testing import models


def _group_of(graph, fqn, dim):
    for g in graph.groups:
        for m in g.members:
            if m.fqn == fqn and m.dim == dim:
                return g, m
    return None, None


def _members(g):
    return {(m.fqn, m.dim) for m in g.members}


def test_residual_add_couples_both_producers_and_all_readers():
    model, x = models()["residual"]()
    graph = build_graph(model, x)
    g, _ = _group_of(graph, "stem.weight", 0)
    assert {("stem.weight", 0), ("b.weight", 0), ("c.weight", 0), ("a.weight", 1), ("c.weight", 1),
            ("fc.weight", 1), ("stem.bias", 0), ("b.bias", 0), ("c.bias", 0)} <= _members(g)
    assert g.width == 8
    inner, _ = _group_of(graph, "a.weight", 0)
    assert _members(inner) == {("a.weight", 0), ("a.bias", 0), ("bn.weight", 0), ("bn.bias", 0),
                               ("bn.running_mean", 0), ("bn.running_var", 0), ("b.weight", 1)}


def test_concat_offsets_channels_of_the_reader():
    model, x = models()["concat"]()
    graph = build_graph(model, x)
    g, m = _group_of(graph, "c.weight", 1)
    assert g.width == 10
    _, ma = _group_of(graph, "a.weight", 0)
    _, mb = _group_of(graph, "b.weight", 0)
    # reader positions 0..5 are a's channels, 6..9 are b's
    assert m.channel[:6].tolist() == ma.channel.tolist()
    assert m.channel[6:].tolist() == mb.channel.tolist()


def test_chunk_ties_same_relative_channel_of_both_halves():
    model, x = models()["split"]()
    graph = build_graph(model, x)
    g, m = _group_of(graph, "a.weight", 0)
    # 8 channels chunked in 2: channel i and i+4 go together; the concat reader adds b's 6 channels
    assert m.channel[:4].tolist() == m.channel[4:].tolist() and len(set(m.channel.tolist())) == 4
    assert g.width == 4 + 6


def test_depthwise_input_channel_owns_its_multiplier_outputs():
    model, x = models()["depthwise"]()
    graph = build_graph(model, x)
    g, m = _group_of(graph, "dw.weight", 0)
    assert g.width == 8
    assert m.channel.tolist() == np.repeat(np.arange(8), 2).tolist()
    assert ("pw1.weight", 0) in _members(g) and ("bn2.weight", 0) in _members(g)


def test_grouped_conv_keeps_groups_equal():
    model, x = models()["grouped"]()
    graph = build_graph(model, x)
    g, m = _group_of(graph, "a.weight", 0)
    assert g.width == 4 and m.channel[:4].tolist() == m.channel[4:].tolist()
    g2, m2 = _group_of(graph, "g.weight", 0)
    # 12 outputs in 2 conv groups and 4 norm groups: [0..5] vs [6..11] tied, norm groups of 3 unified
    assert g2.width == 2
    assert len(set(m2.channel[:3].tolist())) == 1


def test_flatten_repeats_each_channel_over_spatial_positions():
    model, x = models()["flatten_linear"]()
    graph = build_graph(model, x)
    g, m = _group_of(graph, "fc1.weight", 1)
    assert g.width == 6 and m.size == 96
    assert m.channel.tolist() == np.repeat(np.arange(6), 16).tolist()


@pytest.mark.parametrize("name,heads", [("attention", 4), ("attention_gqa", 2), ("attention_gqa_eager", 2),
                                        ("attention_fused_qkv", 4)])
def test_attention_heads_are_the_unit(name, heads):
    model, x = models()[name]()
    graph = build_graph(model, x)
    qname = "qkv.weight" if "fused" in name else "q.weight"
    g, m = _group_of(graph, qname, 0)
    assert g.width == heads
    _, o = _group_of(graph, "o.weight", 1)
    assert o.channel.tolist() == np.repeat(np.arange(4), 4).tolist() if heads == 4 else \
        np.repeat(np.arange(2), 8).tolist()


def test_model_output_and_input_dims_are_not_prunable_with_reasons():
    model, x = models()["chain"]()
    graph = build_graph(model, x)
    reasons = {(n.fqn, n.dim): n.reason for n in graph.nonprunable}
    assert "model output" in reasons[("fc.weight", 0)]
    assert "unlabelled" in reasons[("conv1.weight", 1)]
    assert _group_of(graph, "fc.weight", 0) == (None, None)


def test_ignored_module_output_keeps_its_size():
    model, x = models()["chain"]()
    graph = build_graph(model, x, ignore_modules={id(model.conv2): "conv2"})
    assert _group_of(graph, "conv2.weight", 0) == (None, None)
    assert _group_of(graph, "conv1.weight", 0)[0] is not None


def test_op_without_rule_is_refused_not_guessed():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 6)
            self.b = nn.Linear(6, 2)

        def forward(self, x):
            return self.b(torch.special.i0(self.a(x)) .cummax(-1).values)

    model = Odd()
    graph = build_graph(model, torch.randn(3, 4))
    assert _group_of(graph, "a.weight", 0) == (None, None)
    reasons = {(n.fqn, n.dim): n.reason for n in graph.nonprunable}
    assert "cummax" in reasons[("a.weight", 0)]


def test_register_handler_for_a_custom_op_restores_prunability():
    class Cummax(nn.Module):
        def forward(self, x):
            return x.cummax(0).values

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 6)
            self.op = Cummax()
            self.b = nn.Linear(6, 2)

        def forward(self, x):
            return self.b(self.op(self.a(x)))

    def handler(rec, module, fqn, inputs, output):  # cummax over rows keeps the channel dim in place
        rec.set(output, rec.get(inputs[0]))

    model = M()
    assert _group_of(build_graph(model, torch.randn(3, 4)), "a.weight", 0)[0] is None
    register_handler(Cummax, handler)
    try:
        g, _ = _group_of(build_graph(model, torch.randn(3, 4)), "a.weight", 0)
        assert g is not None and g.width == 6
        from prunekit.errors import ConfigError

        with pytest.raises(ConfigError, match="already registered for it .*overwrite=True"):
            register_handler(Cummax, lambda *a: None)
        register_handler(Cummax, handler, overwrite=True)
        assert _MODULE_HANDLERS[Cummax] is handler
    finally:
        _MODULE_HANDLERS.pop(Cummax)


def test_register_handler_rejects_other_targets():
    from prunekit.errors import ConfigError

    with pytest.raises(ConfigError, match="expected an nn.Module subclass"):
        register_handler(42, lambda *a: None)
    assert not _OP_HANDLERS or all(isinstance(k, str) for k in _OP_HANDLERS)


def test_tied_embedding_and_module_reuse_share_one_group():
    model, x = models()["tied"]()
    graph = build_graph(model, x)
    g, _ = _group_of(graph, "emb.weight", 1)
    assert g.width == 12 and ("mlp1.weight", 1) in _members(g)
    reasons = {(n.fqn, n.dim): n.reason for n in graph.nonprunable}
    assert ("emb.weight", 0) in reasons  # vocabulary rows are indexed by data
    model, x = models()["reuse"]()
    graph = build_graph(model, x)
    g, _ = _group_of(graph, "shared.weight", 0)
    # the shared conv reads its own output: in and out dims are one group, joined with a's output
    assert ("shared.weight", 1) in _members(g) and ("a.weight", 0) in _members(g)


def test_layer_norm_group_is_marked_approximate():
    class LN(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.ln = nn.LayerNorm(8)
            self.b = nn.Linear(8, 2)

        def forward(self, x):
            return self.b(self.ln(self.a(x)))

    graph = build_graph(LN(), torch.randn(3, 4))
    g, _ = _group_of(graph, "a.weight", 0)
    assert g.width == 8 and any("layer norm" in r for r in g.approximate)


def test_perturbing_one_channel_moves_only_coupled_readers():
    # cross-check of the rules: perturb one producer channel and see which downstream dims respond
    model, x = models()["concat"]()
    graph = build_graph(model, x)
    g, ma = _group_of(graph, "a.weight", 0)
    chan = int(ma.channel[2])
    _, mc = _group_of(graph, "c.weight", 1)
    feats = {}
    h = model.c.register_forward_hook(lambda mod, args, out: feats.__setitem__("in", args[0].detach().clone()))
    with torch.no_grad():
        model(x)
        base = feats["in"]
        model.a.bias[2] += 5.0
        model(x)
    h.remove()
    moved = (feats["in"] - base).abs().sum((0, 2, 3)) > 0
    assert moved.nonzero().flatten().tolist() == np.nonzero(mc.channel == chan)[0].tolist()


def test_restride_of_size_one_dims_keeps_channels_and_other_restrides_do_not():
    """A keepdim reduction on a channels-last input restores the layout with ``as_strided_``, changing only
    the strides of size-1 dims: channels go through; an as_strided_ that moves elements stops them."""
    from prunekit.graph import build_graph

    class Pool(nn.Module):
        def __init__(self, move):
            super().__init__()
            self.move = move
            self.a = nn.Conv2d(3, 6, 1)
            self.b = nn.Conv2d(6, 2, 1)

        def forward(self, x):
            h = self.a(x)
            p = h.mean((2, 3), keepdim=True)  # [1, 6, 1, 1]
            if self.move:
                p.as_strided_((1, 6, 1, 1), (6, 0, 1, 1))  # every channel now reads channel 0
            else:
                c = p.shape[1]
                p.as_strided_((1, c, 1, 1), (c, 1, c, c))  # only the size-1 dims change
            return self.b(p)

    x = torch.randn(1, 3, 4, 4)
    kept = build_graph(Pool(move=False).eval(), x)
    assert [g.width for g in kept.groups] == [6]  # a's outputs and b's inputs stay one prunable group
    import copy

    import prunekit as pk
    from prunekit.testing import assert_equivalent, zero_removed_

    model = Pool(move=False).double().eval()
    xd = x.double()
    plan = pk.plan(model, xd, sparsity=0.5)
    twin = copy.deepcopy(model)
    zero_removed_(twin, plan)
    pk.prune_(model, plan)
    assert model.a.weight.shape[0] == model.b.weight.shape[1] == 3
    assert_equivalent(twin, model, xd, atol=1e-12, rtol=1e-10)
    moved = build_graph(Pool(move=True).eval(), x)
    reasons = {n.fqn: n.reason for n in moved.nonprunable}
    assert not moved.groups and "indexing" in reasons["a.bias"], reasons
