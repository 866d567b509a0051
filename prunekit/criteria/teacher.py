"""Teacher / student feature matching: the unpruned model kept frozen beside the pruned one.

Distillation-style recovery (FSKD, DCP, GAL, CURL) compares what a pruned *student* computes with what the
original network, the *teacher*, computed at the same place. :class:`Teacher` keeps a frozen deep copy of
the model taken before the cut (eval mode, no gradients; its memory is counted in ``memory_bytes`` so a
method can report what holding it costs) and records its features with the one calibration collector,
:func:`prunekit.criteria.collect.collect`. :func:`kept_output_channels` says, for a plan about to be
applied, which of the teacher's output channels each student layer keeps, so the teacher's features can be
cut to the student's width (:meth:`Teacher.targets`).

Example:
    >>> import torch
    >>> from torch import nn
    >>> m = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    >>> t = Teacher(m)
    >>> t.memory_bytes == sum(p.numel() * 4 for p in m.parameters())
    True
    >>> t.targets([(torch.ones(4, 2), None)], {"0": [0, 2]})["0"].shape
    torch.Size([4, 2])
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import ConfigError
from .collect import collect

__all__ = ["Teacher", "kept_output_channels"]


class Teacher:
    """A frozen copy of ``model`` as it is now (the unpruned network)."""

    def __init__(self, model: nn.Module):
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the teacher's parameters and buffers."""
        return int(sum(t.numel() * t.element_size() for t in (*self.model.parameters(), *self.model.buffers())))

    def outputs(self, calib, fqns) -> dict:
        """``{fqn: output over calib}`` (batches concatenated, on the CPU) of the teacher's modules ``fqns``."""
        fqns = list(fqns)
        cal = collect(self.model, calib, outputs=fqns)
        return {f: torch.cat(cal.outputs[f]) for f in fqns if cal.outputs.get(f)}

    def targets(self, calib, kept: dict) -> dict:
        """The teacher's outputs of the layers in ``kept`` restricted to the channels the student keeps
        (``kept[fqn]``: output-channel indices along dim 1, or None for all of them)."""
        outs = self.outputs(calib, kept)
        res = {}
        for f, idx in kept.items():
            if f not in outs:
                raise ConfigError(f"Teacher.targets: layer {f!r} produced no output on calib; name layers that run")
            o = outs[f]
            res[f] = o if idx is None else o.index_select(1, torch.as_tensor(list(idx), dtype=torch.long))
        return res


def kept_output_channels(plan, fqns) -> dict:
    """``{layer fqn: kept output-channel indices}`` of ``plan`` (a :class:`prunekit.api.Plan`, not yet applied)
    for the layers ``fqns``; a layer the plan does not shrink keeps all of its channels."""
    removed: dict = {}
    width: dict = {}
    for g in plan.groups:
        for m in g.members:
            mod, _, name = m["fqn"].rpartition(".")
            if name == "weight" and m["dim"] == 0:
                removed.setdefault(mod, set()).update(m["indices"])
                width[mod] = m["size"]
    out = {}
    for f in fqns:
        shape = plan.shapes.get(f + ".weight")
        n = width.get(f, shape[0] if shape else None)
        if n is None:
            raise ConfigError(f"kept_output_channels: {f!r} has no weight in the plan's graph")
        out[f] = [i for i in range(n) if i not in removed.get(f, ())]
    return out
