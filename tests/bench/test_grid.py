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


def test_control_and_torch_pruning_rows_run_after_the_method_rows():
    g = BenchGrid(methods=["tp:l1", "criterion:random", "l1-filter", "torch-prune:global-magnitude"],
                  targets=["macs=0.5"], seeds=[0])
    assert [m for m, _, _ in g.cells()] == ["l1-filter", "tp:l1", "criterion:random",
                                            "torch-prune:global-magnitude"]
    assert g.is_control("criterion:random") and g.is_control("tp:l1") and not g.is_control("l1-filter")
    off = dataclasses.replace(g, equal_budget=False)
    assert off.waits("tp:l1") and not off.waits("criterion:random")  # TP still waits: its MACs goal
    named = dataclasses.replace(g, controls=("criterion:random",))
    assert not named.is_control("tp:l1") and named.is_control("criterion:random")
    assert off.fingerprint() != g.fingerprint() and named.fingerprint() != g.fingerprint()
    with pytest.raises(ConfigError, match=r"controls=\['magnitude'\] are not in methods"):
        dataclasses.replace(g, controls=("magnitude",))
    with pytest.raises(ConfigError, match="equal_budget='yes' must be true or false"):
        dataclasses.replace(g, equal_budget="yes")


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


def _tiny_convnet():
    """Six small convolutions: fine enough channel steps for a 1% MACs match."""
    torch.manual_seed(0)
    layers, c_in = [], 1
    for c in (16, 24, 32, 32, 24, 16):
        layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
        c_in = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 10))


@pytest.mark.parametrize("method", ["tp:l1", "tp:taylor", "tp:bn-scale", "tp:random"])
def test_torch_pruning_peer_lands_within_one_percent_of_the_macs_target(method):
    pytest.importorskip("torch_pruning")
    from prunekit.bench.peers import tp_prune_
    from prunekit.measure import count_macs

    model = _tiny_convnet()
    x = torch.randn(1, 1, 8, 8)
    calib = [(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))]
    before = count_macs(model, x).total
    info = tp_prune_(model, x, method, "macs=0.5", calib=calib, num_classes=10)
    after = count_macs(model, x).total
    assert info["kept"] == pytest.approx(after / before)
    assert abs(after / before / 0.5 - 1) <= 0.01, after / before
    assert model[-1].out_features == 10 and all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("goal", [0.31, 0.246, 0.215])
def test_torch_pruning_matches_a_goal_a_uniform_ratio_cannot_reach(goal):
    """prunekit's rows reach e.g. 0.246 of the MACs; one uniform Torch-Pruning ratio jumps past such goals (every
    layer of a width moves at once): the per-layer ratio mix lands within 1%."""
    pytest.importorskip("torch_pruning")
    from prunekit.bench.peers import tp_prune_
    from prunekit.measure import count_macs

    model = _tiny_convnet()
    x = torch.randn(1, 1, 8, 8)
    uniform = set()
    for r in [i / 50 for i in range(48)]:  # every fraction one uniform ratio can give
        from prunekit.bench.peers import _tp_importance, _tp_prune_once

        m = _tiny_convnet()
        _tp_prune_once(m, x, _tp_importance("l1"), r, [m[-1]])
        uniform.add(round(count_macs(m, x).total / count_macs(_tiny_convnet(), x).total, 6))
    before = count_macs(model, x).total
    info = tp_prune_(model, x, "tp:l1", "macs=0.25", calib=[], num_classes=10, goal=goal)
    kept = count_macs(model, x).total / before
    assert abs(kept / goal - 1) <= 0.01, (kept, goal)
    assert info["goal"] == goal and info["kept"] == pytest.approx(kept)
    if min(abs(u / goal - 1) for u in uniform) > 0.01:  # no uniform ratio lands: the mix did
        assert info["layers_moved"] is not None


def test_torch_prune_peer_honours_the_grid_ignore_and_prunes_recurrent_matrices():
    torch.manual_seed(0)
    model = nn.ModuleDict({"conv": nn.Conv2d(1, 4, 3), "rnn": nn.LSTM(4, 4), "fc": nn.Linear(4, 2)})
    masked = torch_prune_(model, "torch-prune:global-magnitude", "sparsity=0.5", ("conv",))
    names = sorted(f"{type(m).__name__}.{n}" for m, n in masked)
    assert names == ["LSTM.weight_hh_l0", "LSTM.weight_ih_l0", "Linear.weight"]
    assert bool((model["conv"].weight != 0).all())  # ignored: dense
    total = sum(getattr(m, n).numel() for m, n in masked)
    assert sum(int((getattr(m, n) == 0).sum()) for m, n in masked) == round(0.5 * total)
    out, _ = model["rnn"](torch.randn(3, 2, 4))  # the LSTM runs on its masked matrices
    assert out.shape == (3, 2, 4) and bool(torch.isfinite(out).all())
    torch_prune_finalize(masked)
    assert not any("_orig" in k for k in model.state_dict())
