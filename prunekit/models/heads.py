"""Small trainable heads attached beside a network: auxiliary classifiers and an output discriminator.

Methods that judge a pruned network by more than its final loss attach small modules to it without changing
its structure or its ``state_dict``:

- :class:`AuxClassifiers`: classification heads on the outputs of intermediate layers, read by forward hooks
  (DCP, Zhuang et al. 2018: one head ``AvgPool(ReLU(BN(O)))`` -> ``Linear`` on a layer's output ``O``).
  :func:`evenly_spaced` picks where ``P`` heads go along an ordered list of layers.
- :class:`Discriminator`: a small MLP that tells the unpruned network's outputs from the pruned one's
  (GAL, Lin et al. 2019).

The heads are modules of their own (``heads.parameters()``), never registered inside the model; a method
trains them with their own optimizer or through :class:`WithAux`, a wrapper whose parameters are the model's
and the heads'.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    >>> aux = AuxClassifiers(net, ["0"], num_classes=3)
    >>> _ = net(torch.randn(2, 1, 6, 6)); aux.logits["0"].shape
    torch.Size([2, 3])
    >>> aux.remove(); net[0]._forward_hooks
    OrderedDict()
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["AuxClassifier", "AuxClassifiers", "WithAux", "Discriminator", "evenly_spaced"]


def evenly_spaced(names: Sequence[str], n: int) -> list[str]:
    """``n`` of ``names`` (an ordered list of layers) that split it into ``n + 1`` runs of near-equal length:
    the last name of each of the first ``n`` runs. ``n`` is capped at ``len(names) - 1``.

    Example:
        >>> evenly_spaced(["a", "b", "c", "d", "e", "f"], 2)
        ['b', 'd']
    """
    names = list(names)
    n = max(0, min(int(n), len(names) - 1))
    return [names[round((i + 1) * len(names) / (n + 1)) - 1] for i in range(n)]


class AuxClassifier(nn.Module):
    """``Linear(GAP(ReLU(BN(x))))`` on a feature map ``[N, C, H, W]`` (or ``Linear(ReLU(BN(x)))`` on ``[N, C]``)."""

    def __init__(self, channels: int, num_classes: int, spatial: bool = True):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels) if spatial else nn.BatchNorm1d(channels)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn(x))
        return self.fc(h.mean(tuple(range(2, h.dim()))) if h.dim() > 2 else h)


class AuxClassifiers(nn.Module):
    """Auxiliary classifiers on the outputs of the modules ``fqns`` of ``model``, attached by forward hooks.

    Each forward of ``model`` fills ``logits[fqn]`` with that head's output. The head's width is found from one
    forward of ``example_inputs`` (or, without them, from the module's ``out_channels`` / ``out_features``).
    :meth:`remove` detaches the hooks; the model is then exactly as before.
    """

    def __init__(self, model: nn.Module, fqns: Sequence[str], num_classes: int, example_inputs=None):
        super().__init__()
        mods = dict(model.named_modules())
        bad = [f for f in fqns if f not in mods]
        if bad:
            raise ConfigError(f"AuxClassifiers: {bad[0]!r} is not a module of the model; name modules such as "
                              f"{[n for n in mods if n][:5]}")
        shapes = _output_shapes(model, fqns, example_inputs) if example_inputs is not None else {}
        self.fqns = list(fqns)
        self.heads = nn.ModuleDict()
        for f in self.fqns:
            shape = shapes.get(f)
            width = shape[1] if shape else getattr(mods[f], "out_channels", getattr(mods[f], "out_features", None))
            if width is None:
                raise ConfigError(f"AuxClassifiers: cannot tell the width of {f!r}; pass example_inputs")
            spatial = len(shape) > 2 if shape else isinstance(mods[f], nn.Conv2d)
            self.heads[_key(f)] = AuxClassifier(width, num_classes, spatial).to(_device(mods[f]))
        self.logits: dict[str, torch.Tensor] = {}
        self._handles = [mods[f].register_forward_hook(self._hook(f)) for f in self.fqns]

    def _hook(self, fqn: str):
        def hook(_mod, _inp, out):
            self.logits[fqn] = self.heads[_key(fqn)](out)

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.logits = {}


class WithAux(nn.Module):
    """``model`` plus its :class:`AuxClassifiers` as one module (one optimizer trains both); ``forward`` is the
    model's, and ``aux.logits`` holds the heads' outputs of that forward."""

    def __init__(self, model: nn.Module, aux: AuxClassifiers):
        super().__init__()
        self.model = model
        self.aux = aux

    def forward(self, *args, **kw):
        return self.model(*args, **kw)


class Discriminator(nn.Module):
    """An MLP ``in_features -> hidden... -> 1`` giving the logit that its input came from the reference network.

    Example:
        >>> Discriminator(10)(torch.zeros(4, 10)).shape
        torch.Size([4])
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (128, 256, 128)):
        super().__init__()
        layers, c = [], int(in_features)
        for h in hidden:
            layers += [nn.Linear(c, int(h)), nn.LeakyReLU(0.2)]
            c = int(h)
        layers.append(nn.Linear(c, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1)).squeeze(1)


def _key(fqn: str) -> str:
    return fqn.replace(".", "__") or "__root__"


def _device(mod: nn.Module):
    p = next(iter(mod.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def _output_shapes(model: nn.Module, fqns, example_inputs) -> dict:
    mods = dict(model.named_modules())
    shapes: dict = {}

    def hook(f):
        def record(_mod, _inp, out):
            shapes.setdefault(f, tuple(out.shape))

        return record

    handles = [mods[f].register_forward_hook(hook(f)) for f in fqns]
    was = model.training
    model.eval()
    try:
        model(example_inputs.to(_device(model)))
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return shapes
