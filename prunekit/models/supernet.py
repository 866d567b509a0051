"""A small one-shot supernet: every layer holds candidate operations mixed by architecture weights.

:class:`ChoiceLayer` runs its *alive* candidates on the same input and sums their outputs weighted by a softmax
over its architecture logits ``alpha`` (a continuous relaxation, as in DARTS); ``keep_`` drops candidates (a
dropped one is never run again and costs nothing), which is how search-space pruning methods (DA-NAS) shrink
the supernet as the search goes on. :class:`SuperNet` stacks ``ChoiceLayer`` s over images (stride 2 after the
first), then a global average pool and a linear classifier; :meth:`SuperNet.arch_parameters` are the
logits, kept out of ``parameters()`` so the weights and the architecture get their own optimizers. :func:`op_macs` counts every candidate's MACs per
image, the unit the search compute is measured in.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["OPS", "ChoiceLayer", "SuperNet", "op_macs"]


def _conv(c_in, c_out, k, stride, dilation=1):
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, padding=dilation * (k // 2), dilation=dilation,
                                   bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


OPS = {  # name -> builder(c_in, c_out, stride); every candidate maps the same input shape to the same output
    "conv3x3": lambda i, o, s: _conv(i, o, 3, s),
    "conv5x5": lambda i, o, s: _conv(i, o, 5, s),
    "dil3x3": lambda i, o, s: _conv(i, o, 3, s, dilation=2),
    "pool1x1": lambda i, o, s: nn.Sequential(nn.MaxPool2d(3, s, 1), _conv(i, o, 1, 1)),
}


class ChoiceLayer(nn.Module):
    """Candidate operations on one input; output = sum over alive candidates of softmax(alpha)_k * op_k(x).

    Example:
        >>> layer = ChoiceLayer([nn.Identity(), nn.Identity()])
        >>> layer.keep_([1]); layer.probabilities().tolist()
        [0.0, 1.0]
    """

    def __init__(self, ops: Sequence[nn.Module], names: Sequence[str] | None = None):
        super().__init__()
        if not ops:
            raise ConfigError("ChoiceLayer needs at least one candidate operation")
        self.ops = nn.ModuleList(ops)
        self.names = list(names) if names is not None else [str(i) for i in range(len(ops))]
        # architecture logits, one per candidate: a buffer that takes gradients, so a training loop's optimizer
        # (which steps model.parameters()) leaves them to the search's own optimizer, as in DARTS
        self.register_buffer("alpha", torch.zeros(len(ops)).requires_grad_(True))
        self.register_buffer("alive", torch.ones(len(ops), dtype=torch.bool))

    def alive_indices(self) -> list:
        return [int(i) for i in torch.nonzero(self.alive).flatten()]

    def probabilities(self) -> torch.Tensor:
        """Softmax of ``alpha`` over the alive candidates (0 for a dropped one)."""
        p = torch.zeros_like(self.alpha)
        idx = self.alive_indices()
        p[idx] = torch.softmax(self.alpha.detach()[idx], 0)
        return p

    def keep_(self, indices: Sequence[int]) -> None:
        """Keep only candidates ``indices`` (the others are dropped for good)."""
        keep = sorted({int(i) for i in indices})
        if not keep or any(not 0 <= i < len(self.ops) for i in keep):
            raise ConfigError(f"keep_({list(indices)!r}): give at least one index in [0, {len(self.ops)})")
        with torch.no_grad():
            self.alive.zero_()
            self.alive[keep] = True

    def forward(self, x):
        idx = self.alive_indices()
        w = torch.softmax(self.alpha[idx], 0)
        out = None
        for k, i in enumerate(idx):
            y = w[k] * self.ops[i](x)
            out = y if out is None else out + y
        return out


class SuperNet(nn.Module):
    """``len(channels)`` choice layers over ``ops`` (names of :data:`OPS`), the first at stride 1 and the
    others at stride 2, then global average pooling and a linear classifier."""

    def __init__(self, channels: Sequence[int] = (16, 32, 64), ops: Sequence[str] = tuple(OPS),
                 in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        bad = [o for o in ops if o not in OPS]
        if bad:
            raise ConfigError(f"ops={list(ops)!r}: unknown {bad}; choose from {sorted(OPS)}")
        layers, c = [], in_channels
        for k, out in enumerate(channels):
            layers.append(ChoiceLayer([OPS[o](c, out, 1 if k == 0 else 2) for o in ops], ops))
            c = out
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))

    def choice_layers(self) -> list:
        return list(self.layers)

    def arch_parameters(self) -> list:
        """The architecture logits of every choice layer (leaf tensors with gradients, not in ``parameters()``)."""
        return [layer.alpha for layer in self.layers]

    def forward(self, x):
        return self.head(self.layers(x))


@torch.no_grad()
def op_macs(net: SuperNet, x: torch.Tensor) -> list:
    """``[layer][candidate]`` multiply-accumulates per image of every candidate's convolutions (all candidates
    run once on ``x``, whatever is alive)."""
    out = []
    h = x[:1]
    for layer in net.choice_layers():
        row = []
        for op in layer.ops:
            macs = []
            hooks = [m.register_forward_hook(lambda m, i, o: macs.append(
                o.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]))
                for m in op.modules() if isinstance(m, nn.Conv2d)]
            was = op.training
            op.eval()
            y = op(h)
            op.train(was)
            for hk in hooks:
                hk.remove()
            row.append(int(sum(macs)))
        out.append(row)
        h = y
    return out
