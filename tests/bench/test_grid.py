import dataclasses

import pytest
import torch
from torch import nn

from prunekit.bench import BenchGrid, cell_id, check_grid
from prunekit.bench.peers import torch_prune_, torch_prune_finalize
from prunekit.errors import ConfigError


def test_grid_round_trip_and_cell_order(tmp_path):
    g = BenchGrid(methods=["criterion:l1", "tp:l1"], targets=["macs=0.5", "macs=0.25"], seeds=[0, 1])
    assert BenchGrid.from_dict(g.to_dict()) == g
    cells = g.cells()
    assert len(cells) == 8
    assert cells[:3] == [("criterion:l1", "macs=0.5", 0), ("criterion:l1", "macs=0.5", 1),
                         ("criterion:l1", "macs=0.25", 0)]
    assert cell_id("tp:l1", "macs=0.5", 2) == "macs_0.5__tp_l1__s2"


def test_fingerprint_tracks_protocol_only():
    g = BenchGrid()
    assert dataclasses.replace(g, seeds=(0, 1, 2), methods=("tp:lamp",)).fingerprint() == g.fingerprint()
    assert dataclasses.replace(g, lr=0.02).fingerprint() != g.fingerprint()
    assert dataclasses.replace(g, subset=500).fingerprint() != g.fingerprint()


def test_grid_unknown_key_and_bad_values(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("type: prunekit.BenchGrid\nversion: 1\nmethod: [criterion:l1]\n")
    with pytest.raises(ConfigError, match=r"unknown key 'method' \(did you mean 'methods'\?\)"):
        BenchGrid.load(path)
    with pytest.raises(ConfigError, match="methods=.* has duplicates"):
        BenchGrid(methods=["tp:l1", "tp:l1"])
    with pytest.raises(ConfigError, match="targets='macs=2'"):
        BenchGrid(targets=["macs=2"])
    with pytest.raises(ConfigError, match="does not exist"):
        BenchGrid.load(tmp_path / "missing.yaml")


def test_check_grid_reports_every_problem_at_once():
    g = BenchGrid(model="lenet5", data="synthetic", baseline=None, methods=["tp:lampp", "torch-prune:global-magnitude"],
                  targets=["macs=0.5"])
    with pytest.raises(ConfigError) as info:
        check_grid(g)
    msg = str(info.value)
    assert "[tp:lampp @ macs=0.5]" in msg and "did you mean 'lamp'" in msg
    assert "[torch-prune:global-magnitude @ macs=0.5]" in msg and "sparsity=" in msg


def test_torch_prune_global_magnitude_hits_sparsity_and_keeps_masks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    masked = torch_prune_(model, "torch-prune:global-magnitude", "sparsity=0.8")
    total = sum(m.weight.numel() for m, _ in masked)
    zeros = sum(int((m.weight == 0).sum()) for m, _ in masked)
    assert zeros == round(0.8 * total)
    # one SGD step on the masked model: pruned weights stay exactly zero
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(4, 1, 8, 8)).sum().backward()
    opt.step()
    torch_prune_finalize(masked)
    assert sum(int((m.weight == 0).sum()) for m, _ in masked) >= round(0.8 * total)
    assert not any("weight_orig" in k for k in model.state_dict())


@pytest.mark.parametrize("method", ["tp:l1", "tp:taylor", "tp:bn-scale", "tp:random"])
def test_torch_pruning_peer_lands_on_the_macs_target(method):
    pytest.importorskip("torch_pruning")
    from prunekit.bench.peers import tp_prune_
    from prunekit.measure import count_macs

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    x = torch.randn(1, 1, 12, 12)
    calib = [(torch.randn(8, 1, 12, 12), torch.randint(0, 10, (8,)))]
    before = count_macs(model, x).total
    info = tp_prune_(model, x, method, "macs=0.5", calib=calib, num_classes=10, tol=0.03)
    after = count_macs(model, x).total
    assert info["kept"] == pytest.approx(after / before)
    assert 0.47 <= after / before <= 0.5
    assert model[-1].out_features == 10 and all(p.grad is None for p in model.parameters())
