"""Sensitivity allocation on a tiny net with a hand-made evaluation (fast, no data set needed)."""
import json

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.api.sensitivity import ratios_for_drop, ratios_for_target, sensitivity_curves
from prunekit.errors import ConfigError


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def _setup():
    torch.manual_seed(0)
    m = Net()
    x = torch.randn(16, 1, 6, 6)
    ref = m(x).detach()
    # score = minus the output error vs the dense net: 0 for the dense model, falls as channels go
    return m, x, lambda mm: -float((mm(x).detach() - ref).pow(2).mean())


def test_curves_shape_json_and_model_unchanged():
    m, x, ev = _setup()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    c = sensitivity_curves(m, x[:1], ev, sparsities=(0.25, 0.75), ignore=["fc"])
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert sorted(c["layers"]) == ["conv1", "conv2"] and c["baseline"] == 0.0
    assert all(len(v) == 2 for v in c["layers"].values())
    assert json.loads(json.dumps(c)) == c  # plottable as is
    for f in ("conv1", "conv2"):
        assert c["macs"][f][0] > c["macs"][f][1]  # each layer alone costs less when cut more
        assert max(c["layers"][f]) < 0.0  # and every cut changes the output
    assert sum(v[1] for v in c["layers"].values()) < sum(v[0] for v in c["layers"].values())


def test_ratios_for_target_meet_it_and_favour_robust_layers():
    m, x, ev = _setup()
    c = sensitivity_curves(m, x[:1], ev, sparsities=(0.25, 0.5, 0.75), ignore=["fc"])
    ratios, drop = ratios_for_target(m, x[:1], c, "macs=0.6", ignore=["fc"])
    p = pk.plan(m, x[:1], per_layer=ratios, ignore=["fc"], criterion="l1")
    assert p.predicted["macs_after"] <= 0.6 * p.predicted["macs_before"]
    assert ratios == {f: s for f, s in ratios_for_drop(c, drop).items() if s > 0}
    # a smaller accepted drop would miss the target: the choice is the least damaging one
    smaller = [d for d in sorted({-a for v in c["layers"].values() for a in v}) if d < drop]
    if smaller:
        r2 = {f: s for f, s in ratios_for_drop(c, smaller[-1]).items() if s > 0}
        p2 = pk.plan(m, x[:1], per_layer=r2, ignore=["fc"], criterion="l1") if r2 else None
        assert p2 is None or p2.predicted["macs_after"] > 0.6 * p2.predicted["macs_before"]


def test_unreachable_target_and_bad_sparsities():
    m, x, ev = _setup()
    c = sensitivity_curves(m, x[:1], ev, sparsities=(0.25,), ignore=["fc"])
    with pytest.raises(ConfigError, match="target='macs=0.1' cannot be met.*largest measured sparsity"):
        ratios_for_target(m, x[:1], c, "macs=0.1", ignore=["fc"])
    with pytest.raises(ConfigError, match=r"sparsities=\[1.5\].*in \(0, 1\)"):
        sensitivity_curves(m, x[:1], ev, sparsities=(1.5,))
    with pytest.raises(ConfigError, match="layers=\\['conv3'\\].*did you mean 'conv"):
        sensitivity_curves(m, x[:1], ev, layers=["conv3"])
