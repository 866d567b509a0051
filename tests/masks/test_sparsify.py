import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.masks import erk_densities, get_masks, get_pattern, view2d


def mlp():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))


def convnet():
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 8))


def same_state(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9, 0.98])
@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_exact_requested_sparsity(sparsity, allocation):
    model = mlp()
    report = pk.sparsify_(model, sparsity=sparsity, allocation=allocation)
    sizes = {"0.weight": 512, "2.weight": 512, "4.weight": 64}
    if allocation == "global":
        assert report.pruned == round(sparsity * 1088)
    else:
        assert {k: v["pruned"] for k, v in report.layers.items()} == {k: round(sparsity * n) for k, n in sizes.items()}
    zeros = sum(int((model.get_parameter(k) == 0).sum()) for k in sizes)
    assert zeros == report.pruned


def test_magnitude_prunes_smallest_and_global_ranks_across_layers():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 4.0]]))
        model[1].weight.copy_(torch.tensor([[0.5, 5.0], [-6.0, 0.1]]))
    pk.sparsify_(model, sparsity=0.5, allocation="global")
    m = get_masks(model)
    assert m["0.weight"].tolist() == [[False, False], [True, True]]
    assert m["1.weight"].tolist() == [[False, True], [True, False]]


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4"])
def test_nm_pattern_holds_in_every_group(pattern):
    n, m = map(int, pattern.split(":"))
    model = convnet()  # conv0: 4*9=36 cols -> not divisible by 8
    ignore = ["0"] if 36 % m else []
    report = pk.sparsify_(model, pattern=pattern, ignore=ignore)
    for fqn, mask in get_masks(model).items():
        groups = view2d(mask).reshape(mask.shape[0], -1, m).sum(-1)
        assert bool((groups == n).all()), fqn
    assert report.sparsity == pytest.approx(1 - n / m)


@pytest.mark.parametrize("pattern,unit", [("block:1x4", (1, 4)), ("block:4x4", (4, 4)), ("row", None),
                                          ("column", None)])
def test_block_row_column_patterns_prune_whole_units(pattern, unit):
    model = mlp()
    pk.sparsify_(model, sparsity=0.5, pattern=pattern)
    for fqn, mask in get_masks(model).items():
        rows, cols = mask.shape
        r, c = unit or ((1, cols) if pattern == "row" else (rows, 1))
        tiles = mask.reshape(rows // r, r, cols // c, c).float().mean(dim=(1, 3))
        assert bool(((tiles == 0) | (tiles == 1)).all()), fqn
        assert float(tiles.mean()) == pytest.approx(0.5)
        assert get_pattern(pattern).check(mask)


def test_block_scores_are_block_means():
    lin = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[9.0, 0.0, 1.0, 1.0], [0.1, 0.1, 3.0, 3.0]]))
    pk.sparsify_(lin, sparsity=0.5, pattern="block:1x2")
    assert get_masks(lin)["weight"].tolist() == [[True, True, False, False], [False, False, True, True]]


def test_erk_allocation_hits_total_density_and_favours_small_layers():
    model = mlp()
    report = pk.sparsify_(model, sparsity=0.9, allocation="erk")
    assert report.pruned == pytest.approx(0.9 * 1088, abs=2)
    s = {k: v["sparsity"] for k, v in report.layers.items()}
    assert s["4.weight"] < s["2.weight"] and s["4.weight"] < s["0.weight"]
    d = erk_densities({"a": (100, 100), "b": (2, 100)}, 0.5)
    assert d["b"] == 1.0 and (d["a"] * 10000 + 200) == pytest.approx(0.5 * 10200)


def test_per_layer_exempt_and_ignore():
    model = mlp()
    report = pk.sparsify_(model, sparsity=0.9, per_layer={"2": 0.5}, exempt=("last",), ignore=["re:^0$"])
    assert list(report.layers) == ["2.weight"]
    assert report.layers["2.weight"]["pruned"] == 256
    report = pk.sparsify_(mlp(), sparsity=0.9, exempt=("first",))
    assert list(report.layers) == ["2.weight", "4.weight"]


def test_nested_masks_only_grow_and_random_is_seeded():
    model = mlp()
    pk.sparsify_(model, sparsity=0.5, criterion="random", seed=3)
    first = {k: v.clone() for k, v in get_masks(model).items()}
    pk.sparsify_(model, sparsity=0.8, criterion="random", seed=4)
    assert all(bool((~first[k] <= ~v).all()) for k, v in get_masks(model).items())
    twin = mlp()
    pk.sparsify_(twin, sparsity=0.5, criterion="random", seed=3)
    assert all(torch.equal(get_masks(twin)[k], first[k]) for k in first)


def test_snip_criterion_is_zero_for_always_zero_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.randn(16, 6)
    x[:, :2] = 0
    calib = [(x, torch.randint(0, 3, (16,)))]
    scores = pk.masks.get_weight_criterion("snip").fn(model, {"0.weight": model[0].weight}, calib=calib)
    s = scores["0.weight"]
    assert float(s[:, :2].abs().sum()) == 0 and bool((s[:, 2:] > 0).all())
    assert model[0].weight.grad is None  # scoring leaves .grad alone
    with pytest.raises(ConfigError, match="criterion='snip' needs calib"):
        pk.sparsify_(model, sparsity=0.5, criterion="snip")


@pytest.mark.parametrize("kwargs,match", [
    ({"sparsity": 1.0}, r"sparsity=1.0 must be a float in \[0, 1\)"),
    ({"sparsity": -0.1}, r"sparsity=-0.1 must be a float in \[0, 1\)"),
    ({"sparsity": 0.5, "pattern": "elemnt"}, "unknown pattern='elemnt'; did you mean 'element'"),
    ({"sparsity": 0.5, "criterion": "magnitud"}, "unknown weight criterion criterion='magnitud'; did you mean 'magnitude'"),
    ({"pattern": "4:4"}, r"N:M needs 1 <= N < M"),
    ({"pattern": "5:4"}, r"N:M needs 1 <= N < M"),
    ({"pattern": "2:8"}, r"0.weight: pattern='2:8' needs the 36 columns .* multiple of M=8"),
    ({"sparsity": 0.9, "pattern": "2:4"}, "sparsity=0.9 conflicts with pattern='2:4'"),
    ({"sparsity": 0.5, "pattern": "block:3x3"}, r"needs the 8 rows to be a multiple of 3"),
    ({"sparsity": 0.5, "pattern": "block:ax4"}, "'block:RxC' with positive integers"),
    ({"sparsity": 0.5, "ignore": ["fc9"]}, "unknown layer ignore='fc9'"),
    ({"sparsity": 0.5, "allocation": "erc"}, "did you mean 'erk'"),
    ({"sparsity": 0.5, "per_layer": {"2": 1.5}}, r"per_layer\['2'\]=1.5 must be a float"),
])
def test_bad_input_is_a_clear_error_and_the_model_is_unchanged(kwargs, match):
    model = convnet()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match=match):
        pk.sparsify_(model, **kwargs)
    assert same_state(state, model.state_dict()) and get_masks(model) == {}


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError, match=r"unknown pattern='blob'.*; sparsity=2 must be"):
        pk.sparsify_(mlp(), sparsity=2, pattern="blob")


def test_failure_during_apply_restores_the_model():
    model = mlp()
    pk.sparsify_(model, sparsity=0.5)
    state = copy.deepcopy(model.state_dict())
    masks = {k: v.clone() for k, v in get_masks(model).items()}
    with pytest.raises(ConfigError, match="scores lack entries"):
        pk.sparsify_(model, sparsity=0.9, scores={"0.weight": torch.rand(32, 16)})
    assert same_state(state, model.state_dict())
    assert all(torch.equal(get_masks(model)[k], masks[k]) for k in masks)


def test_deterministic_under_a_seed():
    def run():
        torch.manual_seed(7)
        model = convnet()
        pk.sparsify_(model, sparsity=0.7, allocation="global")
        return {k: v.clone() for k, v in get_masks(model).items()}
    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_deprecated_global_and_overrides_still_work_with_a_warning():
    torch.manual_seed(0)
    a = mlp()
    b = copy.deepcopy(a)
    with pytest.warns(DeprecationWarning, match="allocation='global'"):
        old = pk.sparsify_(a, sparsity=0.5, global_=True)
    new = pk.sparsify_(b, sparsity=0.5, allocation="global")
    assert old.allocation == new.allocation == "global" and old.layers == new.layers
    with pytest.warns(DeprecationWarning, match="per_layer"):
        old = pk.sparsify_(mlp(), sparsity=0.9, overrides={"2": 0.5})
    assert old.layers["2.weight"]["pruned"] == 256 and old.layers["0.weight"]["pruned"] == round(0.9 * 512)
    with pytest.raises(ConfigError, match="both given"), pytest.warns(DeprecationWarning):
        pk.sparsify_(mlp(), sparsity=0.9, overrides={"2": 0.5}, per_layer={"2": 0.4})


class _LSTMNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 6)
        self.rnn = nn.LSTM(6, 5, num_layers=2, batch_first=True)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        out, _ = self.rnn(self.embed(x))
        return self.fc(out[:, -1])


def test_recurrent_matrices_are_prunable_weights_and_one_layer_for_exempt():
    from prunekit.masks import prunable_weights

    model = _LSTMNet()
    rnn = ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.weight_ih_l1", "rnn.weight_hh_l1"]
    assert list(prunable_weights(model)) == ["embed.weight", *rnn, "fc.weight"]  # biases stay dense
    assert list(prunable_weights(model, exempt=("first", "last"))) == rnn
    assert list(prunable_weights(model, ignore=["rnn"])) == ["embed.weight", "fc.weight"]
    assert list(prunable_weights(model, recurrent=False)) == ["embed.weight", "fc.weight"]
    assert list(prunable_weights(model, ignore=["re:rnn\\.weight_hh_l\\d"])) == [
        "embed.weight", "rnn.weight_ih_l0", "rnn.weight_ih_l1", "fc.weight"]


def test_sparsify_prunes_lstm_matrices_and_the_pruned_lstm_runs_and_trains():
    torch.manual_seed(0)
    model = _LSTMNet()
    pk.sparsify_(model, sparsity=0.7, allocation="global")
    w = model.rnn.weight_hh_l1
    assert float((w == 0).float().mean()) > 0.3
    x = torch.randn(2, 7, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(x).sum().backward()
    opt.step()
    masks = get_masks(model)
    assert set(masks) >= {"rnn.weight_ih_l0", "rnn.weight_hh_l1"}
    assert bool((model.rnn.weight_hh_l1[~masks["rnn.weight_hh_l1"]] == 0).all())  # the mask holds after a step
    pk.finalize_(model)
    zeros = sum(int((p == 0).sum()) for n, p in model.named_parameters() if "weight" in n and "bias" not in n)
    total = sum(p.numel() for n, p in model.named_parameters() if "weight" in n and "bias" not in n)
    assert zeros == round(0.7 * total)
