"""Resolution branches: a convolution computed on its input downsampled by a scale factor, then upsampled back.

Multi-dimensional pruning (Guo et al., CVPR 2020; :mod:`prunekit.methods.mdp`) removes redundancy along the
spatial size of a layer's input as well as along its channels. Three modules carry it:

* :class:`Resample`: bilinear resizing of a feature map to a given spatial size (``align_corners=False``; for a
  scale of exactly 0.5 on an even size this is the 2x2 average). Its cost is counted by the engine: 4 MACs (the
  four bilinear taps) per output element, per channel, so removing a channel removes its resampling too.
* :class:`ResolutionConv`: an ``nn.Conv2d`` whose forward resizes its input by ``scale``, convolves, and resizes
  the output to the size the full-resolution convolution would give, so later layers are unchanged. It *is* a
  ``Conv2d`` (same parameters and state-dict keys), so the structural engine prunes its channels with the conv
  rule and the conv fixer; only :func:`prunekit.save`/``load`` must know its ``scale`` (recorded in the file).
* :class:`MultiResolutionConv`: parallel branches over candidate scales with a learned selection (softmax over
  logits held outside the module's parameters); :meth:`MultiResolutionConv.collapse` returns the selected branch
  alone (a plain ``nn.Conv2d`` for scale 1).

Why here: the blocks are model building blocks (like the zoo's residual blocks) used by methods and rebuilt by
``io``, both above ``models`` in the layer order; their graph handler only needs ``graph`` (below).
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..graph import register_handler
from ..graph.rules import _factor

__all__ = ["Resample", "ResolutionConv", "MultiResolutionConv", "reduced_size", "conv_out_size", "RESAMPLE_TAPS"]

#: MACs per output element and channel of one bilinear resize (the four weighted neighbours)
RESAMPLE_TAPS = 4


def reduced_size(size: int, scale: float) -> int:
    """Spatial size of a map of side ``size`` resized by ``scale``: ``floor(size * scale)``, at least 1.

    Example:
        >>> reduced_size(28, 0.5), reduced_size(7, 0.5), reduced_size(1, 0.5)
        (14, 3, 1)
    """
    return max(1, int(math.floor(size * scale + 1e-9)))


def conv_out_size(conv: nn.Conv2d, size: Sequence[int]) -> tuple[int, int]:
    """Output spatial size of ``conv`` on an input of spatial size ``size`` (PyTorch's formula)."""
    out = []
    for n, k, s, p, d in zip(size, conv.kernel_size, conv.stride, _pads(conv, size), conv.dilation):
        out.append((n + 2 * p - d * (k - 1) - 1) // s + 1)
    return tuple(out)


def _pads(conv: nn.Conv2d, size) -> tuple:
    if isinstance(conv.padding, str):  # "same" keeps the size at stride 1, "valid" pads nothing
        return tuple((d * (k - 1)) // 2 if conv.padding == "same" else 0
                     for k, d in zip(conv.kernel_size, conv.dilation))
    return tuple(conv.padding)


class Resample(nn.Module):
    """Bilinear resize of an ``[N, C, H, W]`` map to ``size`` (no parameters)."""

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        return F.interpolate(x, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)


@register_handler(Resample)
def _resample_handler(rec, module, fqn, inputs, output):
    """Batch and channel dims pass through; the spatial dims are mixed (killed); 4 MACs per output element."""
    x = inputs[0]
    lx = list(rec.get(x))
    for d in range(2, x.dim()):
        rec.kill(lx[d], "spatial resize over this dim")
    rec.set(output, [lx[0], lx[1]] + [None] * (output.dim() - 2))
    if tuple(output.shape) != tuple(x.shape):  # an identity resize returns its input and costs nothing
        rec.mac("resample", [int(output.shape[0]), int(output.shape[2]), int(output.shape[3]), RESAMPLE_TAPS,
                             _factor(lx[1], x.shape[1])])


class ResolutionConv(nn.Conv2d):
    """``Conv2d`` computed at ``scale`` times its input's resolution, its output resized back to full size.

    With ``scale=1`` it computes exactly what ``nn.Conv2d`` does (no resize is issued).

    Example:
        >>> conv = ResolutionConv.from_conv(nn.Conv2d(3, 4, 3, padding=1), 0.5)
        >>> conv(torch.zeros(2, 3, 8, 8)).shape, conv.scale
        (torch.Size([2, 4, 8, 8]), 0.5)
    """

    def __init__(self, *args, scale: float = 1.0, **kw):
        super().__init__(*args, **kw)
        if not 0 < float(scale) <= 1:
            raise ConfigError(f"scale={scale!r}: a resolution branch reduces its input; give 0 < scale <= 1")
        self.scale = float(scale)
        self.down = Resample()
        self.up = Resample()

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, scale: float) -> "ResolutionConv":
        """A ``ResolutionConv`` with ``conv``'s hyper-parameters and a copy of its weights (on its device)."""
        if not isinstance(conv, nn.Conv2d) or conv.transposed:
            raise ConfigError(f"conv={type(conv).__name__}: a resolution branch wraps an nn.Conv2d")
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                  dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                  padding_mode=conv.padding_mode, scale=scale, device=conv.weight.device, dtype=conv.weight.dtype)
        new.load_state_dict(conv.state_dict())
        new.train(conv.training)
        return new

    def to_conv(self) -> nn.Conv2d:
        """The plain ``nn.Conv2d`` with these weights (what a branch of scale 1 is)."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
                         padding=self.padding, dilation=self.dilation, groups=self.groups,
                         bias=self.bias is not None, padding_mode=self.padding_mode, device=self.weight.device,
                         dtype=self.weight.dtype)
        conv.load_state_dict(self.state_dict())
        conv.train(self.training)
        return conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == 1.0:
            return super().forward(x)
        full = conv_out_size(self, x.shape[-2:])
        small = self.down(x, [reduced_size(n, self.scale) for n in x.shape[-2:]])
        return self.up(super().forward(small), full)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", scale={self.scale}"


class MultiResolutionConv(nn.Module):
    """Parallel resolution branches of one conv with a learned selection over the candidate ``scales``.

    Branch ``i`` is a :class:`ResolutionConv` at ``scales[i]`` initialised with ``conv``'s weights (each branch
    has its own copy). The output is ``sum_i p_i * branch_i(x)`` with ``p = softmax(logits / temperature)``;
    ``logits`` is a plain tensor (not a parameter, so a model optimizer does not see it: the method trains it).
    :meth:`collapse` keeps only the branch of highest ``p`` (ties: the first, i.e. the larger scale when
    ``scales`` are ordered high to low).
    """

    def __init__(self, conv: nn.Conv2d, scales: Sequence[float], temperature: float = 1.0):
        super().__init__()
        if not scales or any(not 0 < float(s) <= 1 for s in scales):
            raise ConfigError(f"scales={list(scales)!r}: candidate scales must be in (0, 1], e.g. [1.0, 0.5]")
        self.scales = tuple(float(s) for s in scales)
        self.temperature = float(temperature)
        self.branches = nn.ModuleList([ResolutionConv.from_conv(conv, s) for s in self.scales])
        self.logits = torch.zeros(len(self.scales), device=conv.weight.device, requires_grad=True)

    def probabilities(self) -> torch.Tensor:
        return torch.softmax(self.logits / self.temperature, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.probabilities()
        out = p[0] * self.branches[0](x)
        for i in range(1, len(self.branches)):
            out = out + p[i] * self.branches[i](x)
        return out

    def selected(self) -> int:
        return int(torch.argmax(self.probabilities().detach()))

    def collapse(self) -> nn.Module:
        """The selected branch alone: a plain ``nn.Conv2d`` for scale 1, else a :class:`ResolutionConv`."""
        branch = self.branches[self.selected()]
        return branch.to_conv() if branch.scale == 1.0 else copy.deepcopy(branch)
