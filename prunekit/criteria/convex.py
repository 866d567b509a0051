"""A per-layer convex solver: the sparsest weights that reproduce a layer's (ReLU) responses within a tolerance.

For one layer with inputs ``X`` (``[n, d]``, one sample a row) and recorded responses ``Y`` (``[n, m]``, one
output unit a column) the program, for every output unit ``j`` separately, is::

    minimise ||u_j||_1   subject to   ||(X u_j - y_j)_Omega||_2 <= eps_j     (Omega: entries where the unit is on)
                                      (X u_j)_k <= ub_kj  for k not in Omega   (the unit stays off there)

This is Net-Trim's program (Aghasi et al., NeurIPS 2017); with ``Omega`` = every entry and no off-constraint it
is the plain linear form used for a layer not followed by a ReLU. The program is a second-order cone program;
:func:`sparse_relu_fit` solves all the units of a layer at once with the ADMM splitting the paper uses
(``u = w`` for the l1 term, ``z = X u`` for the constraint set; one Cholesky factor of ``X^T X + I`` is shared by
every unit and iteration), so a 785-input, 300-unit layer on thousands of samples is a few seconds on a CPU.
:func:`sparse_relu_fit_reference` solves the same program for one unit with ``scipy.optimize.minimize``
(SLSQP), a general-purpose solver used to check the ADMM on small cases.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["FitResult", "sparse_relu_fit", "sparse_relu_fit_reference", "constraint_report"]


@dataclass
class FitResult:
    """``weight`` ``[d, m]`` (exact zeros where the l1 term removed a weight), the iterations run, and per unit the
    achieved error on ``Omega`` and the largest violation of the off-constraint."""

    weight: torch.Tensor
    iters: int
    error: torch.Tensor  # [m] ||(X w - y)_Omega||
    off_violation: torch.Tensor  # [m] max over k not in Omega of (X w - ub)_k, clipped at 0


def _project(v: torch.Tensor, y: torch.Tensor, on: torch.Tensor, ub: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of every column of ``v`` onto {z: ||(z - y)_on|| <= eps, z_off <= ub}."""
    d = torch.where(on, v - y, torch.zeros_like(v))
    norm = d.norm(dim=0).clamp_min(1e-30)
    scale = torch.clamp(eps / norm, max=1.0)
    return torch.where(on, y + d * scale, torch.minimum(v, ub))


def constraint_report(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, on: torch.Tensor,
                      ub: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per unit: ``||(X w - y)_Omega||`` and the largest ``(X w - ub)`` off ``Omega`` (0 when none is violated)."""
    z = x @ w
    err = torch.where(on, z - y, torch.zeros_like(z)).norm(dim=0)
    viol = torch.where(on, torch.zeros_like(z), (z - ub).clamp_min(0)).amax(dim=0) if z.numel() else err * 0
    return err, viol


@torch.no_grad()
def sparse_relu_fit(x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, *, on: torch.Tensor | None = None,
                    ub: torch.Tensor | None = None, unpenalised: int = 0, iters: int = 300, rho: float = 5.0,
                    alpha: float = 1.8, w0: torch.Tensor | None = None, tol: float = 1e-4) -> FitResult:
    """Solve the program above for every column of ``y`` by ADMM (over-relaxed; Boyd et al. 2011, sec. 3.4.3).

    ``x`` ``[n, d]``, ``y`` ``[n, m]``, ``eps`` ``[m]`` absolute tolerances; ``on`` ``[n, m]`` bool (default: all
    entries, the linear form), ``ub`` ``[n, m]`` upper bounds off ``on`` (default 0: the ReLU stays off). The last
    ``unpenalised`` rows of the weight (e.g. a bias fed by a column of ones) are left out of the l1 term. ``rho``
    sets the soft threshold ``1/rho`` relative to the mean magnitude of ``w0`` (the layer's dense weights, the
    warm start); ``alpha`` is the over-relaxation. Stops when primal and dual residuals fall below ``tol``
    (relative) or after ``iters`` iterations. Returns exact zeros where the l1 step removed a weight.

    Example:
        >>> x = torch.eye(3, dtype=torch.float64)               # three samples, three inputs
        >>> y = torch.tensor([[1.0], [0.01], [0.0]], dtype=torch.float64)
        >>> r = sparse_relu_fit(x, y, torch.tensor([0.05], dtype=torch.float64), iters=2000)
        >>> (r.weight.abs() > 1e-6).flatten().tolist()          # the small input is not needed within eps
        [True, False, False]
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ConfigError(f"sparse_relu_fit: x {tuple(x.shape)} and y {tuple(y.shape)} must be [n, d] and [n, m] "
                          f"with the same n (one sample a row)")
    if eps.shape != (y.shape[1],) or bool((eps < 0).any()):
        raise ConfigError(f"sparse_relu_fit: eps {tuple(eps.shape)} must be [m] = [{y.shape[1]}] and >= 0")
    n, d = x.shape
    on = torch.ones_like(y, dtype=torch.bool) if on is None else on
    ub = torch.zeros_like(y) if ub is None else ub
    # rescale inputs so the two consensus constraints weigh alike (the minimiser's support does not change)
    s = float(x.pow(2).sum(0).mean().sqrt().clamp_min(1e-12))
    xs = x / s
    chol = torch.linalg.cholesky(xs.T @ xs + torch.eye(d, dtype=x.dtype))
    w = (w0 * s).clone() if w0 is not None else torch.zeros(d, y.shape[1], dtype=x.dtype)
    tau = float(w.abs().mean()) / rho if w0 is not None and float(w.abs().mean()) > 0 else 1.0 / rho
    pen = torch.ones(d, 1, dtype=x.dtype)
    if unpenalised:
        pen[d - unpenalised:] = 0
    z = xs @ w
    a = torch.zeros_like(z)
    b = torch.zeros_like(w)
    it = 0
    for it in range(1, iters + 1):
        u = torch.cholesky_solve(xs.T @ (z - a) + (w - b), chol)
        xu = xs @ u
        xu_r = alpha * xu + (1 - alpha) * z
        u_r = alpha * u + (1 - alpha) * w
        z_old, w_old = z, w
        z = _project(xu_r + a, y, on, ub, eps)
        v = u_r + b
        w = torch.sign(v) * (v.abs() - tau * pen).clamp_min(0)
        a = a + xu_r - z
        b = b + u_r - w
        if it % 25 == 0:
            prim = ((xu - z).norm() + (u - w).norm()) / (z.norm() + w.norm()).clamp_min(1e-30)
            dual = ((z - z_old).norm() + (w - w_old).norm()) / (a.norm() + b.norm()).clamp_min(1e-30)
            if prim < tol and dual < tol:
                break
    w = w / s
    err, viol = constraint_report(x, w, y, on, ub)
    return FitResult(weight=w, iters=it, error=err, off_violation=viol)


def sparse_relu_fit_reference(x, y, eps: float, *, on=None, ub=None):
    """One unit's program solved by ``scipy.optimize.minimize`` (SLSQP) on ``u = p - q``, ``p, q >= 0``.

    ``x`` ``[n, d]``, ``y`` ``[n]`` (numpy or torch); returns ``(weight [d], l1 norm)`` as numpy. Small problems
    only (a check on :func:`sparse_relu_fit`).
    """
    import numpy as np
    from scipy.optimize import minimize

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, d = x.shape
    on = np.ones(n, bool) if on is None else np.asarray(on, bool)
    ub = np.zeros(n) if ub is None else np.asarray(ub, dtype=np.float64)
    xo, yo, xf, uf = x[on], y[on], x[~on], ub[~on]

    def unit(v):
        return v[:d] - v[d:]

    cons = [{"type": "ineq", "fun": lambda v: eps ** 2 - np.sum((xo @ unit(v) - yo) ** 2),
             "jac": lambda v: np.concatenate([-2 * xo.T @ (xo @ unit(v) - yo), 2 * xo.T @ (xo @ unit(v) - yo)])}]
    if len(xf):
        cons.append({"type": "ineq", "fun": lambda v: uf - xf @ unit(v), "jac": lambda v: np.hstack([-xf, xf])})
    start = np.linalg.lstsq(x, y, rcond=None)[0]
    v0 = np.concatenate([start.clip(min=0), (-start).clip(min=0)])
    res = minimize(lambda v: v.sum(), v0, jac=lambda v: np.ones(2 * d), method="SLSQP", constraints=cons,
                   bounds=[(0, None)] * (2 * d), options={"maxiter": 500, "ftol": 1e-10})
    w = unit(res.x)
    return w, float(np.abs(w).sum())
