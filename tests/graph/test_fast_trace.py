"""The fast trace (weight-reading convs and matmuls not computed) gives the engine exactly the graph of a real
trace, and prune_ falls back to a real trace whenever a made-up value could have steered the forward."""
import copy
import logging

import numpy as np
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.graph import build_graph
from prunekit.graph.trace import MadeUpValue, op_log
from prunekit.testing import assert_equivalent, models, zero_removed_


def graph_signature(g) -> tuple:
    """Everything pruning reads from a graph: groups (members, channel maps, roles), non-prunable dims, costs."""
    groups = sorted((g.width, tuple(g.approximate),
                     tuple(sorted((m.fqn, m.dim, m.size, m.role, tuple(m.channel.tolist())) for m in g.members)))
                    for g in g.groups)
    blocked = sorted((n.fqn, n.dim, n.reason) for n in g.nonprunable)
    return groups, blocked, g.params(), g.macs()


def assert_same_graph(model, x, **kw):
    fast = build_graph(model, x, fast=True, **kw)
    full = build_graph(model, x, **kw)
    assert fast.rec.fast and not full.rec.fast
    assert graph_signature(fast) == graph_signature(full)
    _, ops, _ = op_log(model, x)  # the dense model's real forward issues the ops the fast trace saw
    assert ops == fast.rec.ops == full.rec.ops
    _, fast_ops, unaccounted = op_log(model, x, fast=True)  # and so does a forward without weight arithmetic
    assert fast_ops == ops
    assert fast.rec.unaccounted == unaccounted == []  # every tensor's origin followed
    return fast


def assert_same_as_real_plan(model, ref, x, ignore=("head",)):
    """``model`` (pruned by ``prune_``) equals ``ref`` pruned through a plan on a real trace, tensor for tensor."""
    pk.prune_(ref, pk.plan(ref, x, sparsity=0.5, ignore=list(ignore), trace="real"))
    got, want = model.state_dict(), ref.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("name", sorted(models()))
def test_canonical_models_same_graph(name):
    model, x = models()[name]()
    assert_same_graph(model.eval(), x)


def test_fast_trace_skips_weight_arithmetic_only():
    model, x = models()["residual"]()
    g = build_graph(model, x, fast=True)
    out = g.output
    assert torch.count_nonzero(out) == 0 or not torch.equal(out, model(x))  # values are not the model's
    assert out.shape == model(x).shape
    # a matmul between two activations still runs for real: attention scores decide nothing here, but
    # a mask or rotary table built from buffers must keep its values
    rope = nn.Module()
    rope.register_buffer("inv_freq", torch.arange(1.0, 5.0))
    pos = torch.arange(3.0)[:, None]
    from prunekit.graph.trace import _Mode, Recording
    from prunekit.graph.rules import RULES

    with torch.no_grad(), _Mode(Recording(rope), RULES, fast=True):
        table = pos @ rope.inv_freq[None, :]
    torch.testing.assert_close(table, pos @ rope.inv_freq[None, :])


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "regnet_y_400mf", "vit"])
def test_torchvision_same_graph(name):
    tv = pytest.importorskip("torchvision")
    if name == "vit":
        from torchvision.models.vision_transformer import VisionTransformer

        model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=64,
                                  num_classes=10)
        x = torch.randn(1, 3, 32, 32)
    else:
        model = tv.models.get_model(name, weights=None, num_classes=10)
        x = torch.randn(1, 3, 64, 64)
    assert_same_graph(model.eval(), x)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_transformers_same_graph(arch):
    T = pytest.importorskip("transformers")
    if arch == "bert":
        model = T.BertForSequenceClassification(T.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                             intermediate_size=64, vocab_size=100))
    else:
        model = T.LlamaForCausalLM(T.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                 num_key_value_heads=2, intermediate_size=64, vocab_size=100,
                                                 use_cache=False))
    ids = torch.randint(0, 100, (1, 7))
    assert_same_graph(model.eval(), {"input_ids": ids})


def _prune_calls(monkeypatch):
    """Records the ``fast`` flag of every graph prune_ builds."""
    from prunekit.api import applying, planning

    calls = []
    real = planning.build_graph

    def spy(*a, **k):
        g = real(*a, **k)
        calls.append(g.rec.fast)
        return g

    monkeypatch.setattr(planning, "build_graph", spy)
    monkeypatch.setattr(applying, "build_graph", spy)
    return calls


def test_prune_uses_fast_trace_and_matches_a_real_trace(monkeypatch):
    tv = pytest.importorskip("torchvision")
    model = tv.models.resnet18(weights=None, num_classes=10).double().eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    twin = copy.deepcopy(model)
    plan = pk.plan(twin, x, sparsity=0.5, ignore=["fc"], trace="real")
    calls = _prune_calls(monkeypatch)
    r = pk.prune_(model, example_inputs=x, sparsity=0.5, ignore=["fc"])
    assert calls == [True] and r.trace == r.validation == "fast"
    assert "pruned model without weight arithmetic issued the same ops" in str(r)
    masked = copy.deepcopy(twin)
    zero_removed_(masked, plan)
    pk.prune_(twin, plan)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in twin.state_dict().items()}
    for (k, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), k
    assert_equivalent(masked, model, x, atol=1e-9, rtol=1e-7)
    assert r.params_after == plan.predicted["params_after"]


class DataDependent(nn.Module):
    """Adds a second branch only when the first conv's output is non-zero: a fast trace (zeros) misses the add
    that couples ``a`` and ``b``."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = self.stem(x)
        y = self.a(h)
        if h.abs().sum() > 0:
            y = y + self.b(h)
        else:
            y = y + self.b(h).sum(1, keepdim=True)  # b's channels are not tied to a's on this path
        return self.head(y)


def test_a_branch_on_made_up_values_ends_the_fast_trace(monkeypatch, caplog):
    model = DataDependent().double().eval()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(MadeUpValue, match="_local_scalar_dense"):  # bool(h.abs().sum() > 0): a made-up value
        build_graph(model, x, fast=True)
    masked = copy.deepcopy(model)
    plan = pk.plan(masked, x, sparsity=0.5, ignore=["head"])
    zero_removed_(masked, plan)
    calls = _prune_calls(monkeypatch)
    with caplog.at_level(logging.DEBUG, logger="prunekit.api"):
        r = pk.prune_(model, example_inputs=x, sparsity=0.5, ignore=["head"])
    assert calls == [False] and r.trace == "real"  # the fast attempt ended inside its trace
    assert "did not compute" in caplog.text
    assert model.a.weight.shape[0] == model.b.weight.shape[0] == 4  # a and b coupled by the real path's add
    assert_equivalent(masked, model, x, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("op", ["topk", "nonzero", "index", "repeat"])
def test_selections_by_made_up_values_end_the_fast_trace(op):
    class Select(nn.Module):
        def __init__(self):
            super().__init__()
            self.score = nn.Linear(4, 1)
            self.proj = nn.Linear(4, 4)

        def forward(self, x):  # [tokens, 4]: keep the tokens a learned score selects (a router, a detector)
            s = self.score(x)[:, 0]
            if op == "topk":
                keep = s.topk(2).indices
            elif op == "nonzero":
                keep = (s > 0).nonzero()[:, 0]
            elif op == "index":
                keep = (s > 0).long()
            else:  # each token repeated a score-dependent number of times
                return self.proj(x.repeat_interleave((s > 0).long() + 1, dim=0))
            return self.proj(x[keep])

    model, x = Select().eval(), torch.randn(5, 4)
    with pytest.raises(MadeUpValue):
        build_graph(model, x, fast=True)
    g = build_graph(model, x)  # a real trace is fine
    assert not g.rec.fast


class FirstCallCache(nn.Module):
    """Builds a table in its first forward only (as detection heads cache anchors): the fast trace's op
    sequence has ops the pruned model's forward does not issue."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 2, 1)
        self.table = None

    def forward(self, x):
        if self.table is None:
            self.table = torch.full((1,), 0.5)
        return self.head(self.conv(x).relu()) * self.table


def test_another_op_sequence_falls_back_to_a_real_trace(monkeypatch, caplog):
    model, x = FirstCallCache().eval(), torch.randn(1, 3, 8, 8)
    ref = copy.deepcopy(model)
    calls = _prune_calls(monkeypatch)
    with caplog.at_level(logging.DEBUG, logger="prunekit.api"):
        r = pk.prune_(model, example_inputs=x, sparsity=0.5, ignore=["head"])
    assert calls == [True, False] and r.trace == "real"
    assert "other ops than the fast trace" in caplog.text
    ref(x)  # the reference has built its table too
    assert_same_as_real_plan(model, ref, x)


def test_calibration_data_means_a_real_trace(monkeypatch):
    model, x = models()["residual"]()
    calls = _prune_calls(monkeypatch)
    pk.prune_(model, example_inputs=x, sparsity=0.5, criterion="l2", calib=[(x, None)])
    assert calls == [False]


def test_failed_fast_attempt_leaves_nothing_behind(monkeypatch):
    """A fast attempt rejected after its surgery (the op check) restores the model before the real trace
    runs: the result equals a prune with the real trace only."""
    model = FirstCallCache().eval()
    x = torch.randn(1, 3, 8, 8)
    ref = copy.deepcopy(model)
    ref(x)
    pk.prune_(model, example_inputs=x, sparsity=0.5, ignore=["head"])
    pk.prune_(ref, pk.plan(ref, x, sparsity=0.5, ignore=["head"], trace="real"))
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k
    assert np.isclose(sum(p.numel() for p in model.parameters()), sum(p.numel() for p in ref.parameters()))


class ListBranch(DataDependent):
    """Branches on ``tolist()``, which copies values into Python without passing the dispatcher."""

    read = staticmethod(lambda t: t.tolist())

    def forward(self, x):
        h = self.stem(x)
        y = self.a(h)
        if self.read(h.abs().sum()) > 0:
            y = y + self.b(h)
        else:
            y = y + self.b(h).sum(1, keepdim=True)
        return self.head(y)


@pytest.mark.parametrize("read", ["tolist", "numpy", "asarray", "dlpack"])
def test_values_read_outside_the_dispatcher_end_the_fast_trace(monkeypatch, read):
    model = ListBranch().double().eval()
    model.read = {"tolist": lambda t: t.tolist(), "numpy": lambda t: float(t.numpy()),
                  "asarray": lambda t: float(np.asarray(t)), "dlpack": lambda t: float(np.from_dlpack(t))}[read]
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(MadeUpValue, match=read.replace("asarray", "numpy").replace("dlpack", "__dlpack__")):
        build_graph(model, x, fast=True)
    assert torch.Tensor.tolist is torch._C.TensorBase.tolist  # the guards are gone after the trace
    assert "numpy" not in torch.Tensor.__dict__
    ref = copy.deepcopy(model)
    calls = _prune_calls(monkeypatch)
    r = pk.prune_(model, example_inputs=x, sparsity=0.5, ignore=["head"])
    assert calls == [False] and r.trace == "real"
    assert_same_as_real_plan(model, ref, x)
    assert model.a.weight.shape[0] == model.b.weight.shape[0] == 4  # coupled by the real path's add


def test_real_values_read_in_python_are_fine():
    class Real(DataDependent):
        def forward(self, x):
            n = int(torch.tensor([2, 3]).sum().tolist())  # a constant: real values
            y = self.a(self.stem(x))
            return self.head(y[:, : y.shape[1] - n + 5])

    model, x = Real().eval(), torch.randn(1, 3, 8, 8)
    g = build_graph(model, x, fast=True)
    assert g.rec.fast and g.rec.unaccounted == []


class ViewThenWrite(DataDependent):
    """Takes a view of a buffer-backed scratch tensor, then writes made-up values through another view: the
    first view holds made-up values too, though no op produced it from one."""

    def forward(self, x):
        h = self.stem(x)
        scratch = h.new_ones(h.shape)
        first = scratch[:, :1]  # a view taken while the values are real
        scratch.copy_(h)  # made-up values written through the base
        y = self.a(h)
        if first.abs().sum() > 0:
            y = y + self.b(h)
        else:
            y = y + self.b(h).sum(1, keepdim=True)
        return self.head(y)


def test_made_up_values_follow_the_memory_not_the_tensor_object():
    model, x = ViewThenWrite().double().eval(), torch.randn(1, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(MadeUpValue, match="_local_scalar_dense"):
        build_graph(model, x, fast=True)


class OutsideDispatcher(DataDependent):
    """Computes a value with the dispatcher bypassed (as a C++ extension's kernel would): the fast trace cannot
    follow it, so the pruned model's forward is confirmed with real values."""

    def forward(self, x):
        from torch.utils._python_dispatch import _disable_current_modes

        h = self.stem(x)
        with _disable_current_modes():
            s = h.abs().sum(dim=(1, 2, 3))  # a new tensor no op the trace saw produced
        y = self.a(h)
        if s.sum() > 0:
            y = y + self.b(h)
        else:
            y = y + self.b(h).sum(1, keepdim=True)
        return self.head(y)


def test_tensors_of_unknown_origin_mean_a_real_confirmation(monkeypatch, caplog):
    model, x = OutsideDispatcher().double().eval(), torch.randn(1, 3, 8, 8, dtype=torch.float64)
    g = build_graph(model, x, fast=True)  # the zeros take the path without the add: only a real forward sees it
    assert g.rec.fast and len(g.rec.unaccounted) == 1 and "(1,) tensor of unknown origin" in g.rec.unaccounted[0]
    ref = copy.deepcopy(model)
    calls = _prune_calls(monkeypatch)
    with caplog.at_level(logging.DEBUG, logger="prunekit"):
        r = pk.prune_(model, example_inputs=x, sparsity=0.5, ignore=["head"])
    assert calls == [True, False] and r.trace == "real"
    assert "confirming the fast trace with real values" in caplog.text
    assert "other ops than the fast trace" in caplog.text
    assert_same_as_real_plan(model, ref, x)
    assert model.a.weight.shape[0] == model.b.weight.shape[0] == 4


class CachedAttribute(nn.Module):
    """Multiplies by a plain (unregistered) tensor attribute: its origin is unknown to the trace."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 2, 1)
        self.scale = torch.full((1, 8, 1, 1), 0.5)

    def forward(self, x):
        return self.head(self.conv(x).relu() * self.scale)


def test_an_unknown_tensor_keeps_the_fast_plan_with_a_real_confirmation():
    model, x = CachedAttribute().eval(), torch.randn(1, 3, 8, 8)
    masked = copy.deepcopy(model)
    zero_removed_(masked, pk.plan(masked, x, sparsity=0.5, ignore=["head"]))
    r = pk.prune_(model, example_inputs=x, sparsity=0.5, ignore=["head"])
    assert r.trace == "fast" and r.validation == "real" and "with real values issued the same ops" in str(r)
    assert model.conv.weight.shape[0] == 8  # the attribute's 8 channels block the cut (no guessing)
    assert_equivalent(masked, model, x)


def test_fast_validation_checks_what_the_meta_kernels_do_not():
    from prunekit.graph.trace import _check_conv_shapes

    w, x = torch.zeros(6, 4, 3, 3), torch.zeros(1, 8, 5, 5)  # transposed: weight [in, out/groups, k, k]
    with pytest.raises(RuntimeError, match="input has 8 channels"):
        _check_conv_shapes((x, w, None, [1, 1], [0, 0], [1, 1], True, [0, 0], 1))
    with pytest.raises(RuntimeError, match="bias has 5 entries for 4 output channels"):
        _check_conv_shapes((torch.zeros(1, 8, 5, 5), torch.zeros(4, 8, 3, 3), torch.zeros(5), [1, 1], [0, 0],
                            [1, 1], False, [0, 0], 1))
    with pytest.raises(RuntimeError, match="not divisible by groups=4"):  # a transposed weight's input channels
        _check_conv_shapes((torch.zeros(1, 6, 5, 5), w, None, [1, 1], [0, 0], [1, 1], True, [0, 0], 4))
    _check_conv_shapes((torch.zeros(1, 6, 5, 5), w, torch.zeros(4), [1, 1], [0, 0], [1, 1], True, [0, 0], 1))
    _check_conv_shapes((torch.zeros(1, 6, 5, 5), w, torch.zeros(8), [1, 1], [0, 0], [1, 1], True, [0, 0], 2))


def test_layout_driven_decompositions_keep_the_fast_trace():
    """SegFormer's linear layers decompose as ``addmm`` or as ``mm`` + ``add`` depending on the input's strides,
    which differ between torch's meta kernels and the CPU kernels. Both forwards of a fast prune see the meta
    layouts, so they agree; the graph is the real trace's either way."""
    T = pytest.importorskip("transformers")
    cfg = T.SegformerConfig(num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                            hidden_sizes=[16, 32], patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2],
                            mlp_ratios=[2, 2], decoder_hidden_size=32, num_labels=3)
    torch.manual_seed(0)
    model = T.SegformerForSemanticSegmentation(cfg).eval()
    x = {"pixel_values": torch.randn(2, 3, 64, 64)}  # (with a batch of one the layouts happen to agree)
    ignore = {id(model.decode_head.classifier): "decode_head.classifier"}
    fast = build_graph(model, x, fast=True, ignore_modules=ignore)
    full = build_graph(model, x, ignore_modules=ignore)
    assert graph_signature(fast) == graph_signature(full)
    assert fast.rec.ops != full.rec.ops  # the same computation, decomposed differently
    ref = copy.deepcopy(model)
    r = pk.prune_(model, example_inputs=x, sparsity=0.5, ignore=["decode_head.classifier"])
    assert r.trace == r.validation == "fast"
    assert op_log(model, x)[1] != fast.rec.ops  # a check with real values would have seen "another path"
    assert_same_as_real_plan(model, ref, x, ignore=["decode_head.classifier"])


# ---- pk.plan on the fast trace --------------------------------------------------------------------------
def test_public_plan_uses_the_fast_trace_and_prune_confirms_it():
    tv = pytest.importorskip("torchvision")
    model = tv.models.resnet18(weights=None, num_classes=10).double().eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    ref = copy.deepcopy(model)
    plan = pk.plan(model, x, sparsity=0.5, ignore=["fc"])
    assert plan._graph.rec.fast
    real = pk.plan(ref, x, sparsity=0.5, ignore=["fc"], trace="real")
    assert not real._graph.rec.fast
    assert plan.to_json() == real.to_json()  # the same channels, member for member
    r = pk.prune_(model, plan)
    assert r.trace == r.validation == "fast"
    pk.prune_(ref, real)
    got, want = model.state_dict(), ref.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    with_calib = pk.plan(ref, x, sparsity=0.5, ignore=["fc"], criterion="l2", calib=[(x, None)])
    assert not with_calib._graph.rec.fast  # calibration data: a real trace


@pytest.mark.parametrize("cls", [DataDependent, OutsideDispatcher])
def test_public_plan_traces_for_real_when_the_fast_checks_cannot_vouch(cls):
    model, x = cls().double().eval(), torch.randn(1, 3, 8, 8, dtype=torch.float64)
    plan = pk.plan(model, x, sparsity=0.5, ignore=["head"])
    assert not plan._graph.rec.fast  # a made-up value read, or a tensor of unknown origin
    assert plan.to_json() == pk.plan(copy.deepcopy(model), x, sparsity=0.5, ignore=["head"], trace="real").to_json()


def test_a_fast_plan_the_pruned_forward_does_not_confirm_is_checked_on_a_real_trace(caplog):
    model, x = FirstCallCache().eval(), torch.randn(1, 3, 8, 8)
    ref = copy.deepcopy(model)
    plan = pk.plan(model, x, sparsity=0.5, ignore=["head"])  # the first call builds the table
    assert plan._graph.rec.fast
    with caplog.at_level(logging.DEBUG, logger="prunekit.api"):
        r = pk.prune_(model, plan)  # the second does not: the op check fails, a real trace gives the same groups
    assert "the plan's fast trace was not confirmed" in caplog.text and r.trace == "real"
    ref(x)
    pk.prune_(ref, pk.plan(ref, x, sparsity=0.5, ignore=["head"], trace="real"))
    got, want = model.state_dict(), ref.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)


class FirstCallCouples(DataDependent):
    """Adds b to a in its first forward only: a plan made on that forward couples channels that later
    forwards do not."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        h = self.stem(x)
        y = self.a(h)
        y = y + (self.b(h) if self.calls == 1 else self.b(h).sum(1, keepdim=True))
        return self.head(y)


def test_a_fast_plan_that_a_real_trace_contradicts_is_refused_and_the_model_kept():
    model, x = FirstCallCouples().eval(), torch.randn(1, 3, 8, 8)
    plan = pk.plan(model, x, sparsity=0.5, ignore=["head"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"trace='real'"):
        pk.prune_(model, plan)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in before.items()}


def test_trace_must_be_auto_or_real():
    model, x = models()["residual"]()
    with pytest.raises(ConfigError, match=r"trace='reel' is not valid; did you mean 'real'\?"):
        pk.plan(model, x, sparsity=0.5, trace="reel")
