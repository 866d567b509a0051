"""K-FAC factors and eigenbasis (prunekit.criteria.kfac) and the collector's sampled-label loss, by hand."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.criteria.collect import sampled_label_loss
from prunekit.criteria.kfac import conv_channel_rows, eigenbasis, kfac_factors
from prunekit.errors import ConfigError


def _per_example_grads(model, layer, x, y):
    """Per-example gradients of the loss w.r.t. ``layer``'s output, one autograd call per example."""
    out = []
    for i in range(len(x)):
        store = {}
        h = layer.register_forward_hook(lambda m, a, o: store.__setitem__("o", o))
        loss = F.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
        h.remove()
        out.append(torch.autograd.grad(loss, store["o"])[0][0])
    return torch.stack(out)


def test_linear_factors_equal_the_input_and_per_example_gradient_second_moments():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
    f = kfac_factors(m, [(x[:4], y[:4]), (x[4:], y[4:])], ["0", "2"], fisher="empirical")
    a = torch.cat([x, torch.ones(6, 1)], 1).double()  # the bias is the input factor's constant last coordinate
    torch.testing.assert_close(f["0"].A, a.T @ a / 6)
    g = _per_example_grads(m, m[0], x, y).double()
    torch.testing.assert_close(f["0"].S, g.T @ g / 6, atol=1e-7, rtol=1e-5)
    assert f["0"].bias_in_A and f["0"].samples == 6 and f["2"].A.shape == (5, 5)


def test_conv_factors_are_over_channels_per_kernel_offset_and_scaled_by_the_output_positions():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
    m = nn.Sequential(conv, nn.Flatten(), nn.Linear(3 * 16, 2))
    x, y = torch.randn(2, 2, 4, 4), torch.tensor([0, 1])
    f = kfac_factors(m, [(x, y)], ["0"], fisher="empirical")["0"]
    # A: every kernel offset of every output position of every image reads one channel vector (zero padding in)
    pad = F.pad(x, (1, 1, 1, 1)).double()
    vecs = [pad[n, :, i + di, j + dj] for n in range(2) for i in range(4) for j in range(4)
            for di in range(3) for dj in range(3)]
    v = torch.stack(vecs)
    torch.testing.assert_close(f.A, v.T @ v / len(vecs))
    torch.testing.assert_close(conv_channel_rows(conv, x).T @ conv_channel_rows(conv, x), v.T @ v)
    # S: |T| x the mean over examples and positions of the per-example output-gradient outer product
    g = _per_example_grads(m, conv, x, y).double().permute(0, 2, 3, 1).reshape(-1, 3)
    torch.testing.assert_close(f.S, 16 * g.T @ g / 32, atol=1e-7, rtol=1e-5)
    assert (f.in_positions, f.out_positions, f.bias_in_A) == (16, 16, False)


def test_true_fisher_samples_labels_from_the_model_and_ignores_the_targets():
    loss = sampled_label_loss(torch.Generator().manual_seed(0))
    logits = torch.tensor([[0.0, 60.0], [60.0, 0.0]])
    assert float(loss(logits, torch.tensor([0, 1]))) < 1e-6  # the sure model draws its own labels, not the targets
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 2))
    x = torch.randn(8, 3)
    a = kfac_factors(m, [(x, torch.zeros(8, dtype=torch.long))], ["0"], seed=1)["0"].S
    b = kfac_factors(m, [(x, torch.ones(8, dtype=torch.long))], ["0"], seed=1)["0"].S
    c = kfac_factors(m, [(x, torch.ones(8, dtype=torch.long))], ["0"], fisher="empirical")["0"].S
    assert torch.equal(a, b) and not torch.allclose(b, c)  # same seed -> same draws whatever the targets


def test_eigenbasis_diagonalises_both_factors_and_zeroes_tiny_eigenvalues():
    torch.manual_seed(0)
    r = torch.randn(5, 3, dtype=torch.float64)
    A = r @ r.T  # rank 3: two eigenvalues are 0 up to rounding
    S = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    e = eigenbasis(A, S)
    torch.testing.assert_close(e.Q_A @ torch.diag(e.lam_A) @ e.Q_A.T, A)
    assert e.lam_S.tolist() == pytest.approx([1.0, 3.0]) and int((e.lam_A == 0).sum()) == 2
    d = eigenbasis(A, S, damping=0.5)
    assert d.lam_S.tolist() == pytest.approx([1.5, 3.5])
    with pytest.raises(ConfigError, match="damping"):
        eigenbasis(A, S, damping=-1.0)


def test_bad_layers_and_fisher_are_config_errors():
    m = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    calib = [(torch.randn(2, 3), torch.tensor([0, 1]))]
    with pytest.raises(ConfigError, match="fisher='exact'"):
        kfac_factors(m, calib, ["0"], fisher="exact")
    with pytest.raises(ConfigError, match="K-FAC factors cover"):
        kfac_factors(m, calib, ["1"])
    with pytest.raises(ConfigError, match="did you mean"):
        kfac_factors(m, calib, ["00"])
