"""The least-squares 1x1 correction block: solve, fold, and the block-coordinate sweep (issue 19)."""
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.criteria.correction import (correct_layers_, feature_rows, fold_correction_, relative_error,
                                          solve_correction)
from prunekit.criteria.teacher import Teacher, kept_output_channels
from prunekit.errors import ConfigError


@pytest.mark.parametrize("layer", [nn.Conv2d(3, 4, 3, padding=1), nn.Linear(5, 4)])
def test_folding_equals_running_q_after_the_layer_in_float64(layer):
    torch.manual_seed(0)
    layer = layer.double()
    x = torch.randn(6, 3, 5, 5, dtype=torch.float64) if isinstance(layer, nn.Conv2d) else torch.randn(6, 5).double()
    q = torch.randn(4, 4, dtype=torch.float64)
    with torch.no_grad():
        y = layer(x)
        after = torch.einsum("oc,nc...->no...", q, y)  # a 1x1 conv Q run after the layer
        fold_correction_(layer, q)
        assert torch.allclose(layer(x), after, rtol=0, atol=1e-12)


def test_solve_recovers_a_known_map_and_ridge_shrinks_it():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(200, 3, generator=g, dtype=torch.float64)
    q = torch.tensor([[2.0, 0.0, 1.0], [0.5, -1.0, 0.0], [0.0, 0.0, 3.0]], dtype=torch.float64)
    assert torch.allclose(solve_correction(s, s @ q.T), q, atol=1e-12)
    assert solve_correction(s, s @ q.T, ridge=10.0).norm() < q.norm() - 0.5  # the ridge pulls Q toward 0
    with pytest.raises(ConfigError, match="same number of rows"):
        solve_correction(s, s[:10])
    with pytest.raises(ConfigError, match="ridge=-1"):
        solve_correction(s, s, ridge=-1)
    with pytest.raises(ConfigError, match=r"\[4, 4\]"):
        fold_correction_(nn.Conv2d(2, 4, 1), torch.eye(3))


def _two_convs(dependent: bool):
    """conv1 (2 -> 4, 3x3) then a 1x1 conv2 (4 -> 3); with ``dependent`` filter 3 of conv1 is
    0.5 w0 - 2 w1 + w2, so its output is that combination of channels 0..2 at every position."""
    torch.manual_seed(1)
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.Conv2d(4, 3, 1)).double()
    if dependent:
        with torch.no_grad():
            w = m[0].weight
            w[3] = 0.5 * w[0] - 2 * w[1] + w[2]
    return m


@pytest.mark.parametrize("dependent", [True, False])
def test_q_recovers_the_layer_exactly_when_the_cut_channel_is_a_combination_of_the_kept(dependent):
    """Teacher output t = W2 [x_keep; c^T x_keep] + b = (W2_keep + w2_3 c^T) x_keep + b; the student gives
    W2_keep x_keep + b, and W2_keep (3x3) is invertible, so Q = I + w2_3 c^T W2_keep^-1 with the shift b - Q b
    (folded into conv2's bias) makes them equal. With a random filter 3 no such Q exists."""
    m = _two_convs(dependent)
    x = torch.randn(8, 2, 6, 6, dtype=torch.float64)
    calib = [(x, None)]
    teacher = Teacher(m)
    p = pk.plan_channels(m, x[:1], {"0": [3]})
    targets = teacher.targets(calib, kept_output_channels(p, ["1"]))
    pk.prune_(m, p)
    err = correct_layers_(m, targets, calib)
    with torch.no_grad():
        diff = float((m(x) - teacher.model(x)).abs().max())
    if dependent:
        assert err["1"]["error_before"] > 1e-3 and err["1"]["error_after"] < 1e-20 and diff < 1e-10
    else:
        assert err["1"]["error_after"] > 1e-3 and diff > 1e-3
        assert err["1"]["error_after"] < err["1"]["error_before"]


def test_block_coordinate_sweep_fits_each_layer_on_the_corrected_earlier_layers():
    """The second layer's error before its own fit is measured with the first correction already folded."""
    torch.manual_seed(2)
    m = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.Conv2d(6, 5, 3, padding=1), nn.Conv2d(5, 4, 1)).double()
    x = torch.randn(6, 2, 6, 6, dtype=torch.float64)
    calib = [(x, None)]
    teacher = Teacher(m)
    p = pk.plan_channels(m, x[:1], {"0": [0, 1], "1": [4]})
    targets = teacher.targets(calib, kept_output_channels(p, ["1", "2"]))
    pk.prune_(m, p)
    probe = Teacher(m).model  # the student before any correction
    with torch.no_grad():
        s1 = feature_rows(probe[1](probe[0](x)), probe[1])
    q1, c1 = solve_correction(s1, feature_rows(targets["1"], probe[1]), intercept=True)  # conv 1 has a bias
    fold_correction_(probe[1], q1, c1)
    with torch.no_grad():
        expected = relative_error(feature_rows(probe(x), probe[2]), feature_rows(targets["2"], probe[2]))
    err = correct_layers_(m, targets, calib)
    assert list(err) == ["1", "2"]
    assert err["2"]["error_before"] == pytest.approx(expected, rel=1e-9)
    assert all(e["error_after"] < e["error_before"] for e in err.values())


def test_teacher_is_frozen_counted_and_independent_of_the_student():
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    t = Teacher(m)
    assert not any(p.requires_grad for p in t.model.parameters()) and not t.model.training
    assert t.memory_bytes == 4 * (sum(p.numel() for p in m.parameters()) + sum(b.numel() for b in m.buffers()
                                                                              if b.dtype == torch.float32)) + 8
    with torch.no_grad():
        m[0].weight.zero_()
    assert t.model[0].weight.abs().sum() > 0
    with pytest.raises(ConfigError, match="not a Linear"):
        correct_layers_(m, {"1": torch.zeros(2, 4)}, [(torch.randn(2, 3), None)])
