"""The factorised layer (prunekit.surgery.factorize): reconstruction, forward, counting, save/load, replace."""
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.surgery.factorize import Factorized, factorized_cost, replace, rotate, unrotate


def _orth(n, seed):
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


@pytest.mark.parametrize("layer,x,bias_in_A", [
    (nn.Linear(5, 3), torch.randn(4, 5), True),
    (nn.Linear(5, 3), torch.randn(4, 5), False),
    (nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=True), torch.randn(2, 3, 7, 7), False),
    (nn.Conv2d(3, 4, (3, 1), padding=(1, 0), dilation=(2, 1), bias=False), torch.randn(2, 3, 8, 6), False),
])
def test_full_rank_form_reconstructs_the_weight_and_reproduces_the_layer_in_float64(layer, x, bias_in_A):
    torch.manual_seed(0)
    layer = layer.double()
    d_in = layer.weight.shape[1] + (1 if bias_in_A else 0)
    Q_A, Q_S = _orth(d_in, 1), _orth(layer.weight.shape[0], 2)
    w_star = rotate(layer, Q_A, Q_S, bias_in_A)
    w = layer.weight.detach()
    if bias_in_A:
        w = torch.cat([w, layer.bias.detach()[:, None]], 1)
    assert (unrotate(w_star, Q_A, Q_S) - w).abs().max() < 1e-5  # Q_S W* Q_A^T == W
    f = Factorized.from_layer(layer, Q_A, Q_S, bias_in_A=bias_in_A)
    assert (f(x.double()) - layer(x.double())).abs().max() < 1e-10


def test_dropping_a_direction_removes_exactly_its_rank_one_term():
    lin = nn.Linear(3, 2, bias=False).double()
    Q_A, Q_S = _orth(3, 3), _orth(2, 4)
    w_star = rotate(lin, Q_A, Q_S)
    f = Factorized.from_layer(lin, Q_A, Q_S, keep_in=[0, 2], keep_out=[1])
    expect = w_star[1, 0] * torch.outer(Q_S[:, 1], Q_A[:, 0]) + w_star[1, 2] * torch.outer(Q_S[:, 1], Q_A[:, 2])
    x = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(f(x), x @ expect.T)
    assert (f.rank_in, f.rank_out) == (2, 1)


def test_measure_counts_a_factorised_conv_as_hand_computed():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False)
    f = Factorized.from_layer(conv, torch.eye(4, dtype=torch.float64), torch.eye(6, dtype=torch.float64),
                              keep_in=[0, 1], keep_out=[0, 1, 2])
    # 8x8 input -> 4x4 output. rot_in 1x1 4->2 at 64 positions: 8 params, 512 MACs; core 3x3 2->3 at 16:
    # 54 params, 864 MACs; rot_out 1x1 3->6 at 16: 18 params, 288 MACs. Total 80 params, 1,664 MACs.
    m = pk.measure(nn.Sequential(f), torch.zeros(1, 4, 8, 8), sizes=False)
    assert (m.params, m.macs) == (80, 1664)
    assert factorized_cost(conv, 2, 3, in_positions=64, out_positions=16) == (80, 1664)
    # bias folded into the input basis: rot_in 5->2 with a bias (12), core 2x2 (4), rot_out 2->3 (6)
    lin = nn.Linear(5, 3)
    g = Factorized.from_layer(lin, torch.eye(6, dtype=torch.float64), torch.eye(3, dtype=torch.float64),
                              keep_in=[0, 5], keep_out=[0, 2], bias_in_A=True)
    m = pk.measure(nn.Sequential(g), torch.zeros(1, 5), sizes=False)
    assert (m.params, m.macs) == (22, 20) == factorized_cost(lin, 2, 2, bias_in_A=True)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))


def test_save_and_load_round_trip_a_model_holding_factorised_layers(tmp_path):
    m = _net().eval()
    new = {"3": Factorized.from_layer(m[3], _orth(8, 5), _orth(8, 6), keep_in=[1, 4, 7], keep_out=[0, 2]),
           "6": Factorized.from_layer(m[6], _orth(9, 7), _orth(6, 8), keep_in=[0, 3], keep_out=[1, 2, 5],
                                      bias_in_A=True)}
    assert replace(m, new) == ["3", "6"]
    x = torch.randn(3, 2, 5, 5)
    path = pk.save(m, tmp_path / "m.safetensors")
    back = pk.load(path, _net).eval()
    assert isinstance(back[3], Factorized) and isinstance(back[6], Factorized)
    assert (back[3].rank_in, back[3].rank_out, back[6].rank_in, back[6].rank_out) == (3, 2, 2, 3)
    assert back[6].rot_in.bias is not None and back[6].rot_out.bias is None
    torch.testing.assert_close(back(x), m(x))


def test_replace_skips_a_larger_form_and_leaves_the_model_unchanged_on_error():
    m = _net()
    full = Factorized.from_layer(m[3], _orth(8, 5), _orth(8, 6))  # 64 + 576 + 64 + 8 > 584 parameters
    assert replace(m, {"3": full}) == [] and isinstance(m[3], nn.Conv2d)
    assert replace(m, {"3": full}, skip_larger=False) == ["3"] and m[3] is full
    m = _net()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    ok = Factorized.from_layer(m[3], _orth(8, 5), _orth(8, 6), keep_in=[0], keep_out=[0])
    bad = Factorized.from_layer(m[6], _orth(9, 7), _orth(6, 8), keep_in=[0], keep_out=[0], bias_in_A=True)
    bad.rot_out = nn.Linear(1, 5)  # 5 outputs where the next layer reads 6: the forward fails
    with pytest.raises(RuntimeError):
        replace(m, {"3": ok, "6": bad}, example_inputs=torch.zeros(1, 2, 5, 5))
    assert isinstance(m[3], nn.Conv2d) and isinstance(m[6], nn.Linear)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    with pytest.raises(ConfigError, match="not a submodule"):
        replace(m, {"9": ok})
    with pytest.raises(ConfigError, match="do not fit"):
        Factorized.from_layer(m[3], _orth(7, 1), _orth(8, 1))
    with pytest.raises(ConfigError, match="nn.Linear or nn.Conv2d"):
        Factorized.shell(m[1])
