"""A reshape that splits one channel dim in two: heads (outer unit) or per-channel logits (inner unit)."""
import copy

import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit.testing import assert_equivalent, zero_removed_


class SelectiveKernel(nn.Module):
    """Two conv paths mixed per channel by softmax weights computed from [paths * channels] logits
    (timm's selective-kernel block): the logits are viewed as [B, paths, channels], so the channel is the
    *inner* unit of that split."""

    def __init__(self, c_in=3, c=6, paths=2, rd=4):
        super().__init__()
        self.paths = nn.ModuleList(nn.Conv2d(c_in, c, 3, padding=1 + i, dilation=1 + i) for i in range(paths))
        self.reduce = nn.Conv2d(c, rd, 1)
        self.select = nn.Conv2d(rd, c * paths, 1)
        self.num_paths = paths
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        xs = torch.stack([p(x) for p in self.paths], dim=1)  # [B, P, C, H, W]
        a = self.select(F.relu(self.reduce(xs.sum(1).mean((2, 3), keepdim=True))))
        b, pc, h, w = a.shape
        a = a.view(b, self.num_paths, pc // self.num_paths, h, w).softmax(1)
        return self.head((xs * a).sum(1).mean((2, 3)))


def test_inner_unit_split_prunes_channels_exactly():
    torch.manual_seed(0)
    model, x = SelectiveKernel().double().eval(), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    plan = pk.plan(model, x, sparsity=0.5, ignore=["head"])
    g = next(g for g in plan.groups if any(m["fqn"] == "select.weight" for m in g.members))
    assert g.width == 6 and len(g.channels) == 3
    rows = next(m for m in g.members if m["fqn"] == "select.weight")["indices"]
    assert sorted(rows) == sorted(c + p * 6 for c in g.channels for p in range(2))  # channel c: rows c, 6 + c
    twin = copy.deepcopy(model)
    zero_removed_(twin, plan)
    report = pk.prune_(model, plan)
    assert_equivalent(twin, model, x, atol=1e-10, rtol=1e-8)
    assert model.select.weight.shape[0] == 6 and all(p.weight.shape[0] == 3 for p in model.paths)
    assert report.params_after == plan.predicted["params_after"]


def test_outer_unit_stays_for_heads():
    from prunekit.testing import models

    model, x = models()["attention"]()
    plan = pk.plan(model, x, sparsity=0.5)
    heads = [g for g in plan.groups if any(m["fqn"] == "q.weight" and m["dim"] == 0 for m in g.members)]
    assert len(heads) == 1 and heads[0].width == 4  # 4 heads of head_dim 4: whole heads are the unit
    rows = next(m for m in heads[0].members if m["fqn"] == "q.weight" and m["dim"] == 0)["indices"]
    assert sorted({r // 4 for r in rows}) == sorted(heads[0].channels) and len(rows) == 4 * len(heads[0].channels)
