import pytest
import torch

from prunekit.criteria.convex import constraint_report, sparse_relu_fit, sparse_relu_fit_reference
from prunekit.errors import ConfigError


def _relu_layer(n=60, d=8, m=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(d, m, generator=g, dtype=torch.float64)
    w[:3] *= 0.05  # three weights the responses barely need
    pre = x @ w
    return x, w, pre.clamp_min(0), pre > 0


def test_admm_reaches_the_same_l1_optimum_as_a_general_solver():
    """The batched ADMM and scipy's SLSQP on the same ReLU-consistent program: same l1 norm (the optimum),
    same support. Calibration: 2.47640 both, support of 5 of 8 weights."""
    x, w, y, on = _relu_layer()
    eps = 0.1 * float(y[on].norm())
    fit = sparse_relu_fit(x, y, torch.tensor([eps], dtype=torch.float64), on=on, w0=w, iters=5000, tol=1e-8)
    ref, ref_l1 = sparse_relu_fit_reference(x, y[:, 0], eps, on=on[:, 0])
    assert float(fit.weight.abs().sum()) == pytest.approx(ref_l1, rel=1e-4)
    assert (fit.weight[:, 0] != 0).tolist() == (abs(torch.from_numpy(ref)) > 1e-6).tolist()
    assert float(fit.error[0]) <= eps * (1 + 1e-4) and float(fit.off_violation[0]) < 1e-3
    assert int((fit.weight == 0).sum()) >= 3  # the l1 objective left exact zeros


def test_off_entries_are_kept_off_and_the_linear_form_matches_every_entry():
    x, w, y, on = _relu_layer(seed=1)
    eps = torch.tensor([0.05 * float(y[on].norm())], dtype=torch.float64)
    relu_fit = sparse_relu_fit(x, y, eps, on=on, w0=w, iters=3000, tol=1e-8)
    err, viol = constraint_report(x, relu_fit.weight, y, on, torch.zeros_like(y))
    assert float(viol[0]) < 1e-3 * float(y.abs().max())  # the unit stays off where it was off
    assert float(err[0]) == pytest.approx(float(relu_fit.error[0])) and float(err[0]) <= float(eps[0]) * 1.001
    # the linear form (no `on`): the pre-activations within eps on every entry, the off ones included
    pre = x @ w
    lin_fit = sparse_relu_fit(x, pre, eps, w0=w, iters=3000, tol=1e-8)
    assert float((x @ lin_fit.weight - pre).norm()) <= float(eps[0]) * 1.001
    assert float(((x @ relu_fit.weight - pre) * ~on).norm()) > float(eps[0])  # the ReLU form did not need that


def test_bad_shapes_are_refused():
    x = torch.randn(5, 3)
    with pytest.raises(ConfigError, match=r"x \(5, 3\) and y \(4, 2\)"):
        sparse_relu_fit(x, torch.randn(4, 2), torch.zeros(2))
    with pytest.raises(ConfigError, match="eps"):
        sparse_relu_fit(x, torch.randn(5, 2), torch.tensor([0.1, -1.0]))
