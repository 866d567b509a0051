"""Linear 1x1 corrections fitted by least squares and folded into the layer before them.

A pruned layer's output ``s`` (``[rows, C]``: one row per image and output position) can often be brought
back close to the unpruned network's output ``t`` at the same positions by one linear map across channels,
``t ~ Q s`` -- a 1x1 convolution after the layer. FSKD (Li et al., CVPR 2020) fits such a ``Q`` on a few
unlabeled images; DCP, CURL and similar reconstruction methods fit the same kind of map. Because the map is
linear and sits right after a Conv2d / Linear (before any BatchNorm or nonlinearity), it folds into that
layer exactly: ``W' = Q W`` (over the output channels), ``b' = Q b``, so the corrected network has the
pruned architecture's size and cost.

- :func:`solve_correction`: ``argmin_Q ||Q s - t||^2`` (+ an optional ridge), by least squares in float64.
- :func:`fold_correction_`: write ``Q`` into a Conv2d / Linear in place.
- :func:`correct_layers_`: block-coordinate fitting over several layers in forward order -- each layer's
  ``Q`` is fitted on the features the student produces with every earlier correction already folded in, so
  one forward sweep solves ``sum_b ||Q_b s_b - t_b||^2`` block by block.

Example:
    >>> import torch
    >>> s = torch.tensor([[1., 0.], [0., 1.], [1., 1.]], dtype=torch.float64)
    >>> solve_correction(s, s @ torch.tensor([[2., 0.], [1., 3.]], dtype=torch.float64).T).round().tolist()
    [[2.0, 0.0], [1.0, 3.0]]
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from ..errors import ConfigError
from .collect import channel_first, collect

log = logging.getLogger(__name__)

__all__ = ["feature_rows", "solve_correction", "fold_correction_", "correctable", "correct_layers_",
           "relative_error"]


def feature_rows(t: torch.Tensor, module: nn.Module | None = None) -> torch.Tensor:
    """A layer's output as rows ``[images x positions, channels]`` in float64 (channels last)."""
    return channel_first(t.detach(), module).t().double()


def relative_error(s: torch.Tensor, t: torch.Tensor) -> float:
    """``||s - t||^2 / ||t||^2`` (0 when both are 0)."""
    den = float(t.double().pow(2).sum())
    num = float((s.double() - t.double()).pow(2).sum())
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


def solve_correction(s: torch.Tensor, t: torch.Tensor, ridge: float = 0.0, *,
                     intercept: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``Q`` ``[C_t, C_s]`` minimising ``||s Q^T - t||^2 + ridge * mean(diag(s^T s)) * ||Q||^2``.

    ``s`` ``[n, C_s]`` are the student's rows, ``t`` ``[n, C_t]`` the targets. ``ridge=0`` is plain least
    squares (``torch.linalg.lstsq``; the minimum-norm solution when ``s`` is rank-deficient); ``ridge > 0``
    solves the regularised normal equations, the ridge relative to the mean squared feature. With
    ``intercept`` the map is affine, ``t ~ Q s + c``, and ``(Q, c)`` is returned (``c`` is not penalised).
    """
    if s.dim() != 2 or t.dim() != 2 or s.shape[0] != t.shape[0]:
        raise ConfigError(f"solve_correction: s {tuple(s.shape)} and t {tuple(t.shape)} must be [rows, channels] "
                          f"with the same number of rows")
    if ridge < 0:
        raise ConfigError(f"solve_correction: ridge={ridge!r} must be >= 0 (0 = plain least squares)")
    s, t = s.double(), t.double()
    if intercept:
        ms, mt = s.mean(0), t.mean(0)
        q = solve_correction(s - ms, t - mt, ridge)
        return q, mt - q @ ms
    if ridge == 0:
        driver = "gelsd" if s.device.type == "cpu" else None
        return torch.linalg.lstsq(s, t, driver=driver).solution.t().contiguous()
    gram = s.t() @ s
    lam = ridge * float(gram.diagonal().mean().clamp_min(1e-30))
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram + lam * eye, s.t() @ t).t().contiguous()


def correctable(module: nn.Module) -> bool:
    """A layer a channel correction folds into: Linear, or Conv2d with ``groups == 1``."""
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def fold_correction_(module: nn.Module, q: torch.Tensor, shift: torch.Tensor | None = None) -> None:
    """Fold ``Q`` ``[out, out]`` into ``module`` in place: ``W' = Q W``, ``b' = Q b`` (+ ``shift``, which needs
    the layer's own bias to go into; no bias stays none).

    Afterwards ``module(x) == Q @ module_before(x) (+ shift)`` over the output channels, exactly up to rounding.
    """
    if not correctable(module):
        raise ConfigError(f"fold_correction_: {type(module).__name__} is not a Linear or a Conv2d with groups=1; "
                          f"a 1x1 correction folds only into those")
    out = module.weight.shape[0]
    if tuple(q.shape) != (out, out):
        raise ConfigError(f"fold_correction_: Q has shape {tuple(q.shape)}, the layer has {out} output channels; "
                          f"pass a [{out}, {out}] matrix")
    if shift is not None and module.bias is None:
        raise ConfigError("fold_correction_: a shift needs the layer's bias to fold into; the layer has none")
    w = module.weight
    q64 = q.detach().to(device=w.device, dtype=torch.float64)
    with torch.no_grad():
        w.copy_((q64 @ w.detach().double().reshape(out, -1)).reshape(w.shape).to(w.dtype))
        if module.bias is not None:
            b = q64 @ module.bias.detach().double() + (0 if shift is None else shift.detach().to(q64))
            module.bias.copy_(b.to(module.bias.dtype))


def _outputs(model: nn.Module, calib, fqns: list) -> dict:
    cal = collect(model, calib, outputs=fqns)
    return {f: torch.cat(cal.outputs[f]) for f in fqns if cal.outputs.get(f)}


def correct_layers_(student: nn.Module, targets: dict, calib, *, ridge: float = 0.0) -> dict:
    """Fit and fold one correction per layer of ``student``, block-coordinate in forward order.

    ``targets`` maps a student layer FQN to the output it should produce on ``calib`` (``[N, C, ...]``, e.g.
    the teacher's output at the channels the student kept). Layers are visited in the student's module
    order; each is fitted on the features the student produces with the earlier corrections folded in, and
    a layer whose error would not drop is left as it was. A layer with a bias gets an affine correction
    (``t ~ Q s + c``, ``c`` folded into the bias; ours: a biased layer's outputs are not centred, and the
    bias takes the shift exactly). Returns ``{fqn: {"error_before", "error_after",
    "rows"}}`` (relative squared errors ``||s - t||^2 / ||t||^2`` on ``calib``).
    """
    mods = dict(student.named_modules())
    bad = [f for f in targets if f not in mods or not correctable(mods[f])]
    if bad:
        raise ConfigError(f"correct_layers_: {bad[0]!r} is not a Linear / Conv2d (groups=1) of the student; "
                          f"name layers a correction folds into")
    out = {}
    for f in [n for n in mods if n in targets]:
        mod = mods[f]
        s_raw = _outputs(student, calib, [f]).get(f)
        t_raw = targets[f]
        if s_raw is None or s_raw.shape != t_raw.shape:
            raise ConfigError(f"correct_layers_: layer {f!r} gives outputs of shape "
                              f"{None if s_raw is None else tuple(s_raw.shape)} on calib, its target has "
                              f"{tuple(t_raw.shape)}; record the targets on the same batches at the kept channels")
        s, t = feature_rows(s_raw, mod), feature_rows(t_raw, mod)
        before = relative_error(s, t)
        if mod.bias is not None:
            q, c = solve_correction(s, t, ridge, intercept=True)
        else:
            q, c = solve_correction(s, t, ridge), None
        after = relative_error(s @ q.t() + (0 if c is None else c), t)
        if after < before:
            fold_correction_(mod, q, c)
        else:
            after = before
        out[f] = {"error_before": before, "error_after": after, "rows": int(s.shape[0])}
    log.info("least-squares 1x1 corrections folded into %d of %d layers",
             sum(e["error_after"] < e["error_before"] for e in out.values()), len(out))
    return out
