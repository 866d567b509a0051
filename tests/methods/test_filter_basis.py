"""Filter basis (Li et al., ICCV 2019): the shared-basis conv, its SVD start, counting, save/load, the method."""
import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.filter_basis import split_size
from prunekit.surgery.factorize import BasisConv, basis_cost

from method_setups import conv_batches, conv_ctx, tiny_convnet

load_all()


@pytest.mark.parametrize("split", [8, 4, 2, 1])
def test_folding_the_full_rank_basis_back_equals_the_conv_in_float64(split):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 6, 3, stride=2, padding=1).double()
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64)
    f = BasisConv.from_conv(conv, split, BasisConv.max_rank(conv, split))
    assert f.n_groups == 8 // split and f.basis.shape == (BasisConv.max_rank(conv, split), split, 3, 3)
    assert (f.folded_weight() - conv.weight.detach()).abs().max() < 1e-12
    with torch.no_grad():
        assert (f(x) - conv(x)).abs().max() < 1e-12  # basis then 1x1 mix, run separately
        assert (f.fold()(x) - conv(x)).abs().max() < 1e-12  # folded back into one conv


@pytest.mark.parametrize("split,n_basis", [(8, 2), (4, 5), (2, 7), (1, 3)])
def test_at_reduced_rank_the_weight_error_is_exactly_the_discarded_singular_values_energy(split, n_basis):
    torch.manual_seed(1)
    conv = nn.Conv2d(8, 6, 3, padding=1, bias=False).double()
    f = BasisConv.from_conv(conv, split, n_basis)
    s = torch.linalg.svdvals(BasisConv.slices(conv, split))
    err2 = float((f.folded_weight() - conv.weight.detach()).pow(2).sum())
    assert err2 == pytest.approx(float(s[n_basis:].pow(2).sum()), rel=1e-10)
    assert err2 > 0


def test_the_engine_counts_a_basis_conv_as_hand_computed():
    conv = nn.Conv2d(8, 6, 3, stride=2, padding=1)
    f = BasisConv.from_conv(conv, 4, 3)
    # 9x9 input -> 5x5 output. basis 3 x 4 x 3 x 3 = 108 params, run on g = 2 groups: 2*3*36 = 216 MACs a position;
    # mix 1x1 6 -> 6 with bias: 36 + 6 params, 36 MACs a position. 150 params, 252 * 25 = 6,300 MACs.
    m = pk.measure(nn.Sequential(f), torch.zeros(1, 8, 9, 9), sizes=False)
    assert (m.params, m.macs) == (150, 6300) == basis_cost(conv, 4, 3, out_positions=25)


def test_bad_shapes_are_refused():
    conv = nn.Conv2d(6, 4, 3)
    with pytest.raises(ConfigError, match="does not divide the 6 input channels"):
        BasisConv.from_conv(conv, 4, 2)
    with pytest.raises(ConfigError, match="n_basis=40 must be in 1..8"):
        BasisConv.from_conv(conv, 3, 40)
    with pytest.raises(ConfigError, match="groups=1"):
        BasisConv.from_conv(nn.Conv2d(4, 4, 3, groups=2), 2, 1)
    assert split_size(16, 0.5) == 8 and split_size(12, 0.3) == 4 and split_size(1, 0.5) == 1


def test_method_decomposes_meets_the_target_trains_the_basis_and_saves_and_loads(tmp_path):
    data = conv_batches(4)
    model = tiny_convnet()
    res = get_method("filter-basis").run(conv_ctx(model, data, target="macs=0.6"))
    t = res.telemetry
    assert res.engaged is True and t["layers_decomposed"] == 2 == t["layers_considered"]
    assert t["train_steps"] == 4 and t["basis_change"] > 0 and 0 < t["energy_kept"] < 1
    assert isinstance(model[0], BasisConv) and isinstance(model[3], BasisConv)
    assert model[3].split == 2 and model[3].n_groups == 2  # split = C_in / 2 (entry's check)
    macs = pk.measure(model, data[0][0][:1], sizes=False).macs
    dense = pk.measure(tiny_convnet(), data[0][0][:1], sizes=False).macs
    assert macs <= 0.6 * dense and res.info["macs"][1] == res.info["predicted_cost"]
    path = pk.save(model, tmp_path / "m.safetensors")
    back = pk.load(path, tiny_convnet).eval()
    assert isinstance(back[3], BasisConv) and back[3].basis.shape == model[3].basis.shape
    model.eval()
    torch.testing.assert_close(back(data[0][0]), model(data[0][0]))


def test_a_budget_that_needs_no_decomposition_warns_and_names_the_knob():
    model = tiny_convnet()
    with pytest.warns(MechanismWarning, match="lower the target"):
        res = get_method("filter-basis").run(conv_ctx(model, conv_batches(2), target="macs=1.0"))
    assert res.engaged is False and res.telemetry["layers_decomposed"] == 0
    assert isinstance(model[0], nn.Conv2d) and isinstance(model[3], nn.Conv2d)


def test_bad_input_is_refused_and_leaves_the_model_as_it_was():
    model = tiny_convnet()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match="filter-basis.*cannot be reached"):
        get_method("filter-basis").run(conv_ctx(model, conv_batches(2), target="macs=0.02"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model[3], nn.Conv2d)
    with pytest.raises(ConfigError, match=r"options\['split'\]=0 must be > 0"):
        get_method("filter-basis").run(conv_ctx(model, conv_batches(2), options={"split": 0}))
    mlp = nn.Sequential(nn.Conv2d(1, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
    with pytest.raises(ConfigError, match="found no nn.Conv2d with a k x k kernel"):
        get_method("filter-basis").run(conv_ctx(mlp, conv_batches(2)))


def test_a_hand_set_basis_counts_m_s_k2_plus_g_m_cout_parameters_per_layer():
    """Entry's check (a) on the tiny net with s = C_in / 2 and m = C_out / 4 (rounded up): conv1 (1 -> 4, s = 1,
    g = 1, m = 1): 1*1*9 + 1*1*4 + 4 bias = 17 (was 40); conv2 (4 -> 6, s = 2, g = 2, m = 2): 2*2*9 + 2*2*6 + 6
    bias = 66 (was 222)."""
    model = tiny_convnet()
    res = get_method("filter-basis").run(conv_ctx(model, conv_batches(2), target="params=0.9",
                                                  options={"basis_fraction": 0.25}))
    assert res.info["n_basis"] == {"0": 1, "3": 2} and res.info["splits"] == {"0": 1, "3": 2}
    assert sum(p.numel() for p in model[0].parameters()) == 17
    assert sum(p.numel() for p in model[3].parameters()) == 66
    assert res.info["params"][0] - res.info["params"][1] == (40 - 17) + (222 - 66)
    with pytest.raises(ConfigError, match=r"basis_fraction'\]=0.25 keeps .* more than target='params=0.3'"):
        get_method("filter-basis").run(conv_ctx(tiny_convnet(), conv_batches(2), target="params=0.3",
                                                options={"basis_fraction": 0.25}))


@pytest.mark.heavy  # minutes of CPU: make test-heavy
@pytest.mark.needs_fashion
def test_small_scale_basis_at_a_fifth_of_the_params_beats_equal_params_width_reduction_but_trails_dense_by_5pp():
    """Entry check on the shipped ResNet-20 (Fashion-MNIST; 3,000 training images, 2,000 test images, 3 epochs
    SGD lr 0.01 cosine for every row): every 3x3 conv as a basis with s = C_in/2, m = C_out/4. Calibration run
    (this test, seed 0): dense 92.90%, dense fine-tuned 93.20%; filter basis 19.10% right after the SVD start,
    88.20% after training (params 0.200, MACs 0.315 of dense); uniform L1 width reduction to the same params
    (0.1997) 10.55% after the cut, 85.60% after training. Entry (a) holds (5x fewer parameters) and the basis
    beats the width-reduced net by 2.60 pp; entry (b)'s "within 1.5 pp of dense" does not at this budget (-5.00 pp)."""
    from prunekit.train import TrainConfig, fit
    from prunekit.train.baseline import load_baseline

    torch.set_num_threads(1)
    b = pk.data.load("fashion-mnist", batch_size=128, subset=(3000, 2000), val_fraction=0.0, augment=False)
    train, test, x = list(b.train), list(b.test), torch.zeros(1, 1, 28, 28)
    cfg = TrainConfig(epochs=3, lr=0.01, scheduler="cosine", progress=False)
    base = load_baseline("resnet20-fashion-mnist")
    dense_params = pk.measure(base, x, sizes=False).params
    fb0 = copy.deepcopy(base)  # the SVD start alone (no training)
    get_method("filter-basis").run(RunContext(model=fb0, example_inputs=x, target="params=0.9", train_data=train,
                                              prune_epochs=0, options={"split": 0.5, "basis_fraction": 0.25}))
    cut = {"dense": pk.evaluate(base, test)["accuracy"], "fb_svd_start": pk.evaluate(fb0, test)["accuracy"]}
    fb = copy.deepcopy(base)
    res = get_method("filter-basis").run(RunContext(
        model=fb, example_inputs=x, target="params=0.9", train_data=train, prune_epochs=3, train_config=cfg,
        options={"split": 0.5, "basis_fraction": 0.25}))
    assert res.engaged and res.telemetry["layers_decomposed"] == 19 and res.telemetry["basis_change"] > 0
    params = pk.measure(fb, x, sizes=False).params
    assert params <= 0.5 * dense_params  # entry (a): at least 2x smaller; run: 0.200
    ft = copy.deepcopy(base)
    fit(ft, train, cfg)
    wr = copy.deepcopy(base)
    pk.prune_(wr, example_inputs=x, criterion="l1", target=f"params={params / dense_params:.4f}", ignore=["fc"])
    assert pk.measure(wr, x, sizes=False).params <= params
    cut["wr_cut"] = pk.evaluate(wr, test)["accuracy"]
    fit(wr, train, cfg)
    acc = {k: pk.evaluate(m, test)["accuracy"] for k, m in (("fb", fb), ("ft", ft), ("wr", wr))}
    macs = {k: pk.measure(m, x, sizes=False).macs / pk.measure(base, x, sizes=False).macs for k, m in
            (("fb", fb), ("wr", wr))}
    print(f"filter-basis ResNet-20: params {params / dense_params:.4f}, MACs {macs}, before training {cut}, "
          f"after {acc}")
    assert acc["fb"] >= acc["wr"] + 0.01, acc  # entry (b), second half; run: 88.20 vs 85.60
    assert acc["ft"] - 0.06 <= acc["fb"] < acc["ft"] - 0.015, acc  # (b) first half does not reproduce; run: -5.00 pp
