"""Stripe-wise convolution: a K x K conv computed as one 1 x 1 conv per kernel position, shifted and summed.

A filter of a ``Conv2d`` (``[C, K, K]``) is ``K*K`` stripes, each a ``1 x 1`` filter of length ``C`` at one kernel
offset ``(i, j)``. The conv's output is the sum over offsets of a ``1 x 1`` conv of the input window shifted by
``(i * dilation, j * dilation)`` (then strided). When stripes are pruned, each offset only computes the filters
that still have their stripe there, and adds them into those filters' output channels: the "broken" conv of
stripe-wise pruning (Meng et al., NeurIPS 2020). :class:`StripeConv2d` is that module; in float64 it equals the
dense conv whose weight is zero at the removed stripes.

:func:`stripe_mask` reads the kept stripes of a conv (``[out, K, K]``: a stripe is kept when any of its ``C``
weights is non-zero), :func:`stripe_cost` counts a stripe conv's MACs and parameters exactly, and
:func:`to_stripes_` swaps every eligible conv of a model for its stripe form (an export for inference; the
training-time model stays a masked ``K x K`` conv with the dense architecture's keys).

Example:
    >>> import torch
    >>> from torch import nn
    >>> conv = nn.Conv2d(2, 3, 3, padding=1).double()
    >>> with torch.no_grad():
    ...     conv.weight[0, :, 1, 2] = 0
    >>> s = StripeConv2d.from_conv(conv)
    >>> x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    >>> bool((s(x) - conv(x)).abs().max() < 1e-12)
    True
    >>> s.n_stripes
    26
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

__all__ = ["StripeConv2d", "stripe_mask", "stripe_cost", "stripe_eligible", "to_stripes_"]


def stripe_eligible(conv: nn.Module) -> str | None:
    """``None`` when ``conv`` can be split into stripes, else the reason it cannot."""
    if type(conv) is not nn.Conv2d:
        return f"{type(conv).__name__} is not an nn.Conv2d"
    if conv.groups != 1:
        return f"groups={conv.groups} (stripes span every input channel; only groups=1 is supported)"
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        return f"padding={conv.padding!r}, padding_mode={conv.padding_mode!r} (numeric zero padding only)"
    return None


def stripe_mask(conv: nn.Conv2d) -> torch.Tensor:
    """Kept stripes ``[out, K_h, K_w]`` (bool): a stripe is kept when any of its ``in_channels`` weights is non-zero."""
    return conv.weight.detach().ne(0).any(dim=1)


class StripeConv2d(nn.Module):
    """A ``Conv2d`` (groups 1, zero padding) as shifted ``1 x 1`` convs, one per kernel offset with a kept stripe.

    ``weights[k]`` is ``[n_k, in_channels]``: the stripes at offset ``offsets[k]`` of the filters ``index_k`` (a
    buffer), whose outputs are added into those output channels. Filters with no stripe left output their bias.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride, padding, dilation,
                 offsets: list[tuple[int, int]], index: list[torch.Tensor], bias: bool):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.dilation = tuple(padding), tuple(dilation)
        self.offsets = [tuple(int(v) for v in o) for o in offsets]
        self.weights = nn.ParameterList([nn.Parameter(torch.zeros(len(i), in_channels)) for i in index])
        for k, i in enumerate(index):
            self.register_buffer(f"index_{k}", torch.as_tensor(i, dtype=torch.long))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, mask: torch.Tensor | None = None) -> "StripeConv2d":
        """The stripe form of ``conv``, keeping the stripes of ``mask`` (``[out, K_h, K_w]``; default
        :func:`stripe_mask`). Weights, dtype and device are ``conv``'s."""
        why = stripe_eligible(conv)
        if why:
            raise ConfigError(f"conv={conv!r}: cannot split into stripes: {why}")
        mask = stripe_mask(conv) if mask is None else mask.to(torch.bool).cpu()
        kh, kw = conv.kernel_size
        if tuple(mask.shape) != (conv.out_channels, kh, kw):
            raise ConfigError(f"mask shape {tuple(mask.shape)}: expected [out, K_h, K_w] = "
                              f"{[conv.out_channels, kh, kw]}")
        offsets, index = [], []
        for i in range(kh):
            for j in range(kw):
                rows = mask[:, i, j].nonzero().flatten()
                if len(rows):
                    offsets.append((i, j))
                    index.append(rows)
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                  offsets, index, conv.bias is not None)
        w = conv.weight.detach()
        new.to(device=w.device, dtype=w.dtype)
        with torch.no_grad():
            for p, (i, j), rows in zip(new.weights, offsets, index):
                p.copy_(w[rows.to(w.device), :, i, j])
            if conv.bias is not None:
                new.bias.copy_(conv.bias.detach())
        return new

    @property
    def n_stripes(self) -> int:
        return sum(p.shape[0] for p in self.weights)

    def index(self, k: int) -> torch.Tensor:
        return getattr(self, f"index_{k}")

    def dense_weight(self) -> torch.Tensor:
        """The equivalent ``K x K`` weight ``[out, in, K_h, K_w]`` (zero at the removed stripes)."""
        ref = self.bias if self.bias is not None else (self.weights[0] if len(self.weights) else None)
        w = torch.zeros(self.out_channels, self.in_channels, *self.kernel_size,
                        dtype=ref.dtype if ref is not None else torch.float32,
                        device=ref.device if ref is not None else None)
        for k, (i, j) in enumerate(self.offsets):
            w[self.index(k), :, i, j] = self.weights[k].detach()
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (ph, pw), (sh, sw), (dh, dw) = self.padding, self.stride, self.dilation
        kh, kw = self.kernel_size
        xp = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
        h_out = (xp.shape[-2] - dh * (kh - 1) - 1) // sh + 1
        w_out = (xp.shape[-1] - dw * (kw - 1) - 1) // sw + 1
        out = x.new_zeros(x.shape[0], self.out_channels, h_out, w_out)
        for k, (i, j) in enumerate(self.offsets):
            window = xp[:, :, i * dh: i * dh + sh * (h_out - 1) + 1: sh, j * dw: j * dw + sw * (w_out - 1) + 1: sw]
            # [B, n_k, h_out, w_out]; a contiguous window keeps the 1x1 conv off the slow strided kernel
            y = F.conv2d(window.contiguous(), self.weights[k][:, :, None, None])
            out = out + y if y.shape[1] == self.out_channels else out.index_add(1, self.index(k), y)
        if self.bias is not None:
            out = out + self.bias[None, :, None, None]
        return out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, stripes={self.n_stripes}/{self.out_channels * self.kernel_size[0] * self.kernel_size[1]}")


def stripe_cost(module: nn.Module, out_positions: int) -> tuple[int, int]:
    """``(MACs, params)`` of a :class:`StripeConv2d` (or of the stripe form of a ``Conv2d``, from its non-zero
    stripes) for ``out_positions`` output pixels: each kept stripe is ``in_channels`` MACs per output pixel."""
    if isinstance(module, StripeConv2d):
        n, c, bias = module.n_stripes, module.in_channels, module.bias is not None
        out = module.out_channels
    else:
        n, c, bias = int(stripe_mask(module).sum()), module.in_channels, module.bias is not None
        out = module.out_channels
    return n * c * out_positions, n * c + (out if bias else 0)


def to_stripes_(model: nn.Module, fqns=None) -> dict[str, StripeConv2d]:
    """Replace the convs ``fqns`` (default: every eligible ``Conv2d`` with a kernel larger than 1 x 1) by their
    :class:`StripeConv2d` forms, in place; returns ``{fqn: new module}``. All are built before any is swapped."""
    mods = dict(model.named_modules())
    if fqns is None:
        fqns = [f for f, m in mods.items() if stripe_eligible(m) is None and m.kernel_size != (1, 1)]
    bad = [f for f in fqns if f not in mods or stripe_eligible(mods[f]) is not None]
    if bad:
        why = stripe_eligible(mods[bad[0]]) if bad[0] in mods else "not a module of the model"
        raise ConfigError(f"fqns={bad!r}: cannot split into stripes ({why}); pass eligible Conv2d FQNs")
    new = {f: StripeConv2d.from_conv(mods[f]) for f in fqns}
    for f, m in new.items():
        model.set_submodule(f, m)
    return new
