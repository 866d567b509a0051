"""Property test: random networks mixing the supported ops prune to exact equivalents of their masked twin."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit.measure.macs import count_macs
from prunekit.testing import assert_equivalent, zero_removed_

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

BLOCKS = ["conv", "residual", "concat", "chunk", "depthwise", "grouped", "se", "mul", "pool", "upsample", "inplace",
          "attention"]


class Block(nn.Module):
    def __init__(self, kind, c, width):
        super().__init__()
        self.kind = kind
        if kind == "conv":
            self.a = nn.Conv2d(c, width, 3, padding=1)
            self.bn = nn.BatchNorm2d(width)
            self.out = width
        elif kind == "residual":
            self.a = nn.Conv2d(c, width, 1)
            self.b = nn.Conv2d(width, c, 3, padding=1)
            self.out = c
        elif kind == "concat":
            self.a = nn.Conv2d(c, width, 1)
            self.b = nn.Conv2d(c, 2, 3, padding=1)
            self.out = width + 2
        elif kind == "chunk":
            self.a = nn.Conv2d(c, 2 * width, 1)
            self.out = width
        elif kind == "depthwise":
            self.a = nn.Conv2d(c, 2 * c, 3, padding=1, groups=c)
            self.out = 2 * c
        elif kind == "grouped":
            self.a = nn.Conv2d(c, 2 * width, 1)
            self.b = nn.Conv2d(2 * width, 2 * width, 3, padding=1, groups=2)
            self.out = 2 * width
        elif kind == "se":
            self.a = nn.Conv2d(c, width, 1)
            self.b = nn.Conv2d(width, c, 1)
            self.out = c
        elif kind == "mul":
            self.a = nn.Conv2d(c, c, 1)
            self.out = c
        elif kind in ("pool", "upsample", "inplace"):
            self.a = nn.Conv2d(c, width, 1)
            self.out = width
        elif kind == "attention":  # pixels as tokens through nn.MultiheadAttention, 2 heads, residual
            self.a = nn.Conv2d(c, 2 * width, 1)
            self.attn = nn.MultiheadAttention(2 * width, 2, batch_first=True)
            self.out = 2 * width

    def forward(self, x):
        k = self.kind
        if k == "conv":
            return F.relu(self.bn(self.a(x)))
        if k == "residual":
            return x + self.b(F.relu(self.a(x)))
        if k == "concat":
            return torch.cat([F.relu(self.a(x)), self.b(x)], 1)
        if k == "chunk":
            p, q = self.a(x).chunk(2, 1)
            return p * torch.sigmoid(q)
        if k == "depthwise":
            return F.silu(self.a(x))
        if k == "grouped":
            return F.relu(self.b(F.relu(self.a(x))))
        if k == "se":
            return x * torch.sigmoid(self.b(F.relu(self.a(x.mean((2, 3), keepdim=True)))))
        if k == "mul":
            return x * self.a(x)
        if k == "pool":
            return F.max_pool2d(self.a(x), 3, 1, 1)
        if k == "upsample":
            return F.interpolate(self.a(x), scale_factor=2, mode="nearest")[..., ::2, ::2]
        if k == "attention":
            y = self.a(x)
            b, ch, h, w = y.shape
            t = y.flatten(2).transpose(1, 2)
            t = t + self.attn(t, t, t, need_weights=False)[0]
            return t.transpose(1, 2).reshape(b, ch, h, w)
        y = self.a(x)
        y.relu_()
        return y


class Net(nn.Module):
    def __init__(self, kinds, widths):
        super().__init__()
        c = 3
        blocks = []
        for k, w in zip(kinds, widths):
            blocks.append(Block(k, c, w))
            c = blocks[-1].out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c * 4, 3)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.blocks(x), 2).flatten(1))


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(kinds=st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=5),
       widths=st.lists(st.integers(2, 6), min_size=5, max_size=5),
       sparsity=st.sampled_from([0.25, 0.5, 0.7]), global_=st.booleans())
@example(kinds=["attention", "conv", "attention"], widths=[4, 3, 2, 5, 5], sparsity=0.5, global_=True)
@example(kinds=["residual", "attention", "concat"], widths=[3, 6, 4, 2, 2], sparsity=0.25, global_=False)
def test_random_networks_prune_to_exact_equivalents(kinds, widths, sparsity, global_):
    torch.manual_seed(len(kinds))
    model = Net(kinds, widths).double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    plan = pk.plan(model, x, sparsity=sparsity, global_=global_, criterion="random", trace="real")
    twin = copy.deepcopy(model)
    zero_removed_(twin, plan)
    by_keywords = copy.deepcopy(model)
    report = pk.prune_(model, plan)
    assert_equivalent(twin, model, x, atol=1e-10, rtol=1e-8)
    assert report.params_after == plan.predicted["params_after"] == sum(p.numel() for p in model.parameters())
    assert count_macs(model, x).total == plan.predicted["macs_after"]
    # prune_ with keywords plans on a fast trace (no weight arithmetic): the same model must come out
    pk.prune_(by_keywords, example_inputs=x, sparsity=sparsity, global_=global_, criterion="random")
    got, want = by_keywords.state_dict(), model.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
