"""Kronecker-factored curvature (K-FAC) of Linear / Conv2d layers and its eigenbasis.

K-FAC approximates the Fisher of one layer's weight ``W`` (``[out, in]``) by a Kronecker product ``A (x) S`` of
the second moment of the layer's inputs, ``A = E[a a^T]``, and that of the gradients of the per-example loss
w.r.t. the layer's outputs, ``S = E[g g^T]`` (Martens & Grosse 2015; for convolutions Grosse & Martens 2016,
"KFC": ``F ~ |T| E[a a^T] (x) E[g g^T]`` with ``|T|`` output positions). In the eigenbases of the two factors
the approximate Fisher is diagonal, which EigenDamage (Wang et al., ICML 2019) prunes in.

Conv layers follow EigenDamage's "patch" form: ``A`` is over the layer's *input channels* (every kernel offset
of every patch is one sample, zero padding included), ``S`` over its output channels, so the eigenbases are a
1x1 rotation before and after the k x k kernel. A Linear layer's bias is the input factor's last coordinate
(a constant 1); a Conv2d bias is left out of the factors.

``fisher="true"`` draws each example's label from the model's own predictive (the true Fisher, the paper's
choice), ``"empirical"`` uses the data's labels. Both run through the one calibration collector
(:func:`prunekit.criteria.collect.collect`).

Example:
    >>> import torch
    >>> from torch import nn
    >>> lin = nn.Linear(2, 2, bias=False)
    >>> f = kfac_factors(lin, [(torch.tensor([[1.0, 0.0], [0.0, 3.0]]), torch.tensor([0, 1]))], [""])
    >>> f[""].A.tolist()   # E[a a^T] over the two examples
    [[0.5, 0.0], [0.0, 4.5]]
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .._registry import closest
from ..errors import ConfigError
from .collect import collect, default_loss, sampled_label_loss

__all__ = ["KFactors", "Eigenbasis", "kfac_factors", "eigenbasis", "conv_channel_rows", "EIG_EPS"]

EIG_EPS = 1e-10  # eigenvalues at or below this are taken as 0 (EigenDamage's reference code)


@dataclasses.dataclass
class KFactors:
    """The K-FAC factors of one layer (float64, CPU).

    ``A``: ``[in (+1), in (+1)]`` input second moment (a Linear bias adds the constant last coordinate);
    ``S``: ``[out, out]`` per-example output-gradient second moment (times ``|T|`` for a conv);
    ``bias_in_A``: whether ``A`` has the bias coordinate; ``in_positions`` / ``out_positions``: spatial
    positions of the layer's input / output per example (1 for a Linear); ``samples``: examples seen."""

    A: torch.Tensor
    S: torch.Tensor
    bias_in_A: bool
    in_positions: int
    out_positions: int
    samples: int


@dataclasses.dataclass
class Eigenbasis:
    """``A = Q_A diag(lam_A) Q_A^T`` and ``S = Q_S diag(lam_S) Q_S^T`` (float64; eigenvalues ascending, those
    at or below :data:`EIG_EPS` set to 0)."""

    Q_A: torch.Tensor
    lam_A: torch.Tensor
    Q_S: torch.Tensor
    lam_S: torch.Tensor


def conv_channel_rows(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The input-channel vectors a Conv2d reads: one row per image, output position and kernel offset,
    ``[N * L * kh * kw, C]`` float64 (zero padding included)."""
    cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
    n, ck, L = cols.shape
    c = module.in_channels
    return cols.reshape(n, c, ck // c, L).permute(0, 3, 2, 1).reshape(-1, c).double()


def _check_layers(model: nn.Module, layers) -> dict:
    named = dict(model.named_modules())
    out = {}
    for n in layers:
        mod = named.get(n)
        if isinstance(mod, nn.Linear):
            out[n] = mod
        elif isinstance(mod, nn.Conv2d) and mod.groups == 1 and not isinstance(mod.padding, str):
            out[n] = mod
        elif mod is None:
            hint = closest(str(n), [k for k in named if k])
            raise ConfigError(f"layers: {n!r} is not a module of the model"
                              + (f"; did you mean {hint!r}?" if hint else "")
                              + "; name layers by their path in model.named_modules()")
        else:
            raise ConfigError(f"layers: {n!r} is a {type(mod).__name__}; K-FAC factors cover nn.Linear and nn.Conv2d "
                              f"with groups=1 and numeric padding; leave it out (ignore=[{n!r}])")
    return out


def kfac_factors(model: nn.Module, calib: Iterable, layers, *, fisher: Literal["true", "empirical"] = "true",
                 seed: int = 0, loss_fn=None) -> dict:
    """``{layer fqn: KFactors}`` over one pass of ``calib`` through ``model`` (see the module docstring).

    ``fisher="true"`` samples labels from the model's predictive with a generator seeded by ``seed``;
    ``"empirical"`` uses the targets (``loss_fn`` overrides both). The model comes back unchanged."""
    if fisher not in ("true", "empirical"):
        raise ConfigError(f"fisher={fisher!r}; choose 'true' (labels sampled from the model, the paper) or "
                          f"'empirical' (the data's labels)")
    layers = list(layers)
    mods = _check_layers(model, layers)
    if loss_fn is None:
        loss_fn = sampled_label_loss(torch.Generator().manual_seed(seed)) if fisher == "true" else default_loss
    acc: dict = {}

    def on_batch(rec):
        for n, mod in mods.items():
            st = acc.setdefault(n, {"A": 0.0, "a_rows": 0, "S": 0.0, "g_rows": 0, "samples": 0,
                                    "in_pos": 1, "out_pos": 1})
            for x in rec.inputs.get(n, []):
                if isinstance(mod, nn.Conv2d):
                    rows = conv_channel_rows(mod, x)
                    st["in_pos"] = x.shape[-2] * x.shape[-1]
                else:
                    rows = x.reshape(-1, x.shape[-1]).double()
                    if mod.bias is not None:
                        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], 1)
                st["A"] = st["A"] + rows.T @ rows
                st["a_rows"] += rows.shape[0]
            for g in rec.output_grads.get(n, []):
                per_example = g.double() * g.shape[0]  # the loss is a batch mean: one example's gradient
                if isinstance(mod, nn.Conv2d):
                    st["out_pos"] = g.shape[-2] * g.shape[-1]
                    rows = per_example.permute(0, 2, 3, 1).reshape(-1, g.shape[1])
                else:
                    rows = per_example.reshape(-1, g.shape[-1])
                st["S"] = st["S"] + rows.T @ rows
                st["g_rows"] += rows.shape[0]
                st["samples"] += g.shape[0]

    collect(model, calib, inputs=list(mods), output_grads=list(mods), loss_fn=loss_fn, on_batch=on_batch,
            keep=False)
    out = {}
    for n, mod in mods.items():
        st = acc.get(n)
        if st is None or not st["a_rows"] or not st["g_rows"]:
            raise ConfigError(f"layers: {n!r} did not run (or got no gradient) on the calibration batches; "
                              f"leave it out (ignore=[{n!r}])")
        out[n] = KFactors(A=st["A"] / st["a_rows"], S=st["S"] / st["g_rows"] * st["out_pos"],
                          bias_in_A=isinstance(mod, nn.Linear) and mod.bias is not None,
                          in_positions=st["in_pos"], out_positions=st["out_pos"], samples=st["samples"])
    return out


def eigenbasis(A: torch.Tensor, S: torch.Tensor, *, damping: float = 0.0) -> Eigenbasis:
    """Eigendecompositions of the two factors in float64, ``damping * I`` added to each first (0: the paper).

    Example:
        >>> e = eigenbasis(torch.diag(torch.tensor([2.0, 1.0])), torch.eye(1))
        >>> e.lam_A.tolist(), e.Q_A.abs().tolist()
        ([1.0, 2.0], [[0.0, 1.0], [1.0, 0.0]])
    """
    if damping < 0:
        raise ConfigError(f"damping={damping!r}; pass a value >= 0 (0 = no damping)")
    out = []
    for m in (A, S):
        m = m.double()
        m = (m + m.T) / 2 + damping * torch.eye(m.shape[0], dtype=torch.float64)
        lam, Q = torch.linalg.eigh(m)
        out += [Q, torch.where(lam > EIG_EPS, lam, torch.zeros_like(lam))]
    return Eigenbasis(Q_A=out[0], lam_A=out[1], Q_S=out[2], lam_S=out[3])
