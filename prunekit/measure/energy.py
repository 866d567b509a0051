"""A proxy energy model of one inference: computation plus data movement through a memory hierarchy.

Yang, Chen and Sze (CVPR 2017, https://arxiv.org/abs/1611.05128) estimate a layer's energy as the energy of
its computation (the multiply-accumulates that are not skipped because a weight is zero, times the cost of one
MAC) plus the energy of moving its data (weights, input and output feature maps) through the levels of the
memory hierarchy, each access weighted by that level's cost. Their costs are normalised to one MAC and come
from the Eyeriss accelerator (Chen, Emer, Sze, ISCA 2016): register file 1x, inter-PE network 2x, global buffer
6x, DRAM 200x. The paper maps each layer on the accelerator's row-stationary dataflow to count the accesses;
that hardware mapper is not part of prunekit. Here the access counts are a stated proxy (the method entry's
"MACs x e_MAC + weight/activation bytes x e_DRAM, configurable"):

- computation: ``nonzero MACs x mac``, with nonzero MACs = MACs x the layer's weight density;
- register file: ``rf_per_mac`` accesses per nonzero MAC (operands and partial sum);
- inter-PE network and global buffer: every input and output feature-map value once;
- global buffer and DRAM: every stored weight word once, plus the feature maps once;
- a sparse weight tensor stores its nonzero values with an index each (``index_bits`` per ``value_bits``
  value) when that is smaller than the dense tensor, as the paper's compressed weights.

Every constant is a field of :class:`EnergyModel`; :func:`layer_energy` gives the per-layer breakdown,
:func:`energy` the total (a cost like MACs or parameters: lower is better, comparable across candidates of one
model). Only ``nn.Conv*`` and ``nn.Linear`` layers are counted (every other op costs 0, as in the MAC counter).

Example:
    >>> import torch, torch.nn as nn
    >>> m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> e = layer_energy(m, torch.zeros(1, 4))
    >>> e["0"].macs, e["2"].macs
    (12, 6)
    >>> energy(m, torch.zeros(1, 4)) == e["0"].total + e["2"].total
    True
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["EnergyModel", "LayerEnergy", "layer_energy", "energy", "EYERISS"]


@dataclass(frozen=True)
class EnergyModel:
    """Cost per access at each level, normalised to one MAC, and the proxy's access counts."""

    mac: float = 1.0  # one multiply-accumulate (Eyeriss, Chen et al. ISCA 2016: the unit of the normalisation)
    rf: float = 1.0  # register file access (Eyeriss: 1x)
    noc: float = 2.0  # inter-PE array network access (Eyeriss: 2x)
    buffer: float = 6.0  # global buffer access (Eyeriss: 6x)
    dram: float = 200.0  # off-chip DRAM access (Eyeriss: 200x)
    rf_per_mac: float = 3.0  # ours (proxy): register-file accesses per nonzero MAC (weight, input, partial sum)
    value_bits: int = 16  # bit width of a stored value (Yang et al. use 16-bit fixed point)
    index_bits: int = 4  # ours (proxy): bits of the index stored beside each nonzero weight of a sparse tensor

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"EnergyModel({f.name}={v!r}): every cost and count must be a number >= 0")
        if self.value_bits <= 0:
            raise ConfigError(f"EnergyModel(value_bits={self.value_bits!r}) must be > 0")


EYERISS = EnergyModel()


@dataclass(frozen=True)
class LayerEnergy:
    """One layer's proxy energy for one example (in units of one MAC's energy) and the counts behind it."""

    macs: int  # dense multiply-accumulates for one example
    nonzero_macs: float  # MACs x weight density
    weight_words: float  # words stored for the weight (values, plus indices when sparse storage is smaller)
    ifmap: int  # input feature-map values for one example
    ofmap: int  # output feature-map values for one example
    compute: float
    data: float

    @property
    def total(self) -> float:
        return self.compute + self.data

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "total": self.total}


def _weight_words(w: torch.Tensor, em: EnergyModel) -> float:
    nnz = int((w != 0).sum())
    sparse = nnz * (em.value_bits + em.index_bits) / em.value_bits
    return float(min(w.numel(), sparse))


@torch.no_grad()
def layer_energy(model: nn.Module, example_inputs, em: EnergyModel | None = None) -> dict[str, LayerEnergy]:
    """``{module fqn: LayerEnergy}`` of every Conv/Linear layer for one forward of ``example_inputs``, per
    example (divided by the batch size). The model is run once in eval mode and left as it was."""
    em = em if em is not None else EYERISS
    seen: dict[str, tuple] = {}
    handles = []

    def hook(name):
        def fn(mod, args, out):
            x = args[0]
            batch = x.shape[0] if x.dim() > 1 else 1
            # one output value reads one weight row (Linear: in_features; Conv: in_channels/groups x kernel)
            macs = out.numel() // batch * mod.weight[0].numel()
            prev = seen.get(name, (0, 0, 0))
            seen[name] = (prev[0] + macs, prev[1] + x.numel() // batch, prev[2] + out.numel() // batch)
        return fn

    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd)):
            handles.append(mod.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        model(*args)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    mods = dict(model.named_modules())
    out = {}
    for name, (macs, ifmap, ofmap) in seen.items():
        w = mods[name].weight.detach()
        density = float((w != 0).sum()) / max(w.numel(), 1)
        nz = macs * density
        words = _weight_words(w, em)
        compute = nz * em.mac
        data = (nz * em.rf_per_mac * em.rf + (ifmap + ofmap) * em.noc
                + (words + ifmap + ofmap) * (em.buffer + em.dram))
        out[name] = LayerEnergy(macs=int(macs), nonzero_macs=nz, weight_words=words, ifmap=int(ifmap),
                                ofmap=int(ofmap), compute=compute, data=data)
    if not out:
        raise ConfigError(f"model={type(model).__name__} has no Conv or Linear layer that ran on the example "
                          f"inputs; the energy model counts those layers only")
    return out


def energy(model: nn.Module, example_inputs, em: EnergyModel | None = None) -> float:
    """Total proxy energy of one inference of one example (units of one MAC's energy); see the module doc."""
    return float(sum(e.total for e in layer_energy(model, example_inputs, em).values()))
