"""Groups whose new width breaks model code the trace cannot see are found, left whole and reported."""
import copy

import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
import prunekit.surgery as surgery
from prunekit.testing import assert_equivalent, zero_removed_


class InputWidthAttention(nn.Module):
    """timm-style attention: the head size and the output reshape come from the *input* width ``C``."""

    def __init__(self, dim, heads):
        super().__init__()
        self.num_heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class Net(nn.Module):
    def __init__(self, dim=16, heads=4, depth=3):
        super().__init__()
        self.embed = nn.Linear(6, dim)
        self.attn = nn.ModuleList(InputWidthAttention(dim, heads) for _ in range(depth))
        self.mlp = nn.ModuleList(nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
                                 for _ in range(depth))
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        h = self.embed(x)
        for a, m in zip(self.attn, self.mlp):
            h = h + a(h)
            h = h + m(h)
        return self.head(h).mean(1)


def _keep_whole(plan, names):
    for g in plan.groups:
        if g.name in names:
            g.channels, g.kept = [], g.width
            for mem in g.members:
                mem["indices"] = []


def test_breaking_groups_left_whole_and_the_rest_pruned_exactly(monkeypatch):
    torch.manual_seed(0)
    model, x = Net().double().eval(), torch.randn(2, 5, 6, dtype=torch.float64)
    plan = pk.plan(model, x, sparsity=0.5, ignore=["head"])
    assert len(plan.groups) == 7  # the residual stream, 3 x heads, 3 x MLP hidden
    # with the residual stream kept, removing heads makes the inner width differ from the input width C
    # that the attention's reshapes use: each heads group breaks the forward, the MLP groups do not
    _keep_whole(plan, {"embed.weight[0]"})
    twin = copy.deepcopy(model)
    calls = []
    real = surgery._validate
    monkeypatch.setattr(surgery, "_validate", lambda *a: calls.append(1) or real(*a))
    report = pk.prune_(model, plan)
    left = sorted(s["where"] for s in report.skipped if "breaks the model's forward" in s["reason"])
    assert left == ["attn.0.qkv.weight[0]", "attn.1.qkv.weight[0]", "attn.2.qkv.weight[0]"]
    for a, m in zip(model.attn, model.mlp):  # heads whole, MLP hidden halved
        assert a.qkv.weight.shape == (48, 16) and m[0].weight.shape == (16, 16)
    _keep_whole(plan, set(left))  # the twin zeroes only what was really removed
    zero_removed_(twin, plan)
    assert_equivalent(twin, model, x, atol=1e-10, rtol=1e-8)
    # the failed validation; 1 try in which each breaking attention block hands its input on and so all
    # three are named (each blames the one group with members there); 1 passing try; the final validation
    # (before stand-ins each try stopped at the next breaking module: 1 + 4 + 1)
    assert len(calls) == 1 + 2 + 1


def test_passthrough_modules_are_those_whose_output_keeps_the_input_channels():
    from prunekit.graph import build_graph

    torch.manual_seed(0)
    model, x = Net().double().eval(), torch.randn(2, 5, 6, dtype=torch.float64)
    through = surgery.passthrough_modules(build_graph(model, x))
    # blocks and the attention read and write the residual stream; embed/head and the MLP's inner layers
    # change the width, and an inner ReLU carries the MLP hidden channels, not the stream's
    assert {"attn.0", "attn.1", "attn.2", "mlp.0", "mlp.1", "mlp.2"} <= through
    assert not {"embed", "head", "attn.0.qkv", "attn.0.proj", "mlp.0.0", "mlp.0.2", ""} & through


def test_groups_blamed_together_are_tried_one_by_one(monkeypatch):
    torch.manual_seed(0)
    model, x = Net().double().eval(), torch.randn(2, 5, 6, dtype=torch.float64)
    heads01 = [r + h * 4 + part * 16 for part in range(3) for h in (0, 1) for r in range(4)]  # q, k, v rows
    # a quarter of the residual stream and half of the first block's heads: the first attention's reshapes
    # break, and both groups have members there; the MLP channels are fine
    plan = pk.plan_channels(model, x, {"embed": [0, 1, 2, 3], "attn.0.qkv": heads01, "mlp.0.0": list(range(16))},
                            ignore=["head"])
    calls = []
    real = surgery._validate
    monkeypatch.setattr(surgery, "_validate", lambda *a: calls.append(1) or real(*a))
    report = pk.prune_(model, plan)
    left = sorted(s["where"] for s in report.skipped if "breaks the model's forward" in s["reason"])
    assert left == ["attn.0.qkv.weight[0]", "embed.weight[0]"]
    assert model.mlp[0][0].weight.shape == (16, 16) and model.embed.weight.shape == (16, 6)
    # the failed validation; the try that blames both; the passing try; one try per blamed group; the final
    assert len(calls) == 1 + 1 + 1 + 2 + 1


def test_prune_with_keywords_searches_on_the_fast_trace():
    """prune_ plans on a fast trace; the search for breaking groups runs on it (its tries only ask whether the
    forward runs) and the final prune's check confirms the trace: same model as the real-trace path."""
    torch.manual_seed(0)
    model, x = Net().double().eval(), torch.randn(2, 5, 6, dtype=torch.float64)
    ref = copy.deepcopy(model)
    kw = dict(sparsity=0.5, ignore=["head"], per_layer={"embed": 0.0})  # the stream stays: the heads break
    report = pk.prune_(model, example_inputs=x, **kw)
    ref_report = pk.prune_(ref, pk.plan(ref, x, trace="real", **kw))
    assert report.trace == "fast" and ref_report.trace == "real"
    left = sorted(s["where"] for s in report.skipped if "breaks the model's forward" in s["reason"])
    assert left and left == sorted(s["where"] for s in ref_report.skipped if "breaks the model's forward" in s["reason"])
    got, want = model.state_dict(), ref.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert report.params_after == ref_report.params_after < report.params_before
