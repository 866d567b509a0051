"""Several tasks in one network: per-weight task ownership, per-task heads, masked inference, safetensors.

:class:`PackedNetwork` wraps a backbone (any module whose last classifier is a named submodule, the *head*)
and keeps, for every Conv/Linear weight of the backbone outside the head, an integer *owner* per element:
``0`` = free, ``k`` = trained for task ``k`` and frozen since. Task ``k`` computes with the weights owned by
tasks ``1..k`` (every other weight taken as 0) and its own head; the weights of later tasks never reach it,
so an earlier task's outputs stay bit-identical however many tasks are added (PackNet, Mallya & Lazebnik
2018). Inference never edits the weights: the masked tensors are passed with
:func:`torch.func.functional_call`.

- ``packed.task = k`` picks the task ``forward`` computes (default: the latest); ``packed.new_task(classes)``
  adds a head (a fresh copy of the head module with ``classes`` outputs) and returns its number.
- ``packed.owners`` (``{weight fqn: int8 tensor}``, buffers of the wrapper), :meth:`PackedNetwork.task_mask`,
  :meth:`PackedNetwork.claim_free_` (free weights become task ``k``'s), :meth:`PackedNetwork.release_`
  (chosen weights of task ``k`` become free again and are zeroed).
- :func:`save_packed_network` / :func:`load_packed_network`: one safetensors file with the backbone, every head and the
  owners (the owner tensors make the per-task binary masks), and a JSON record of the head FQN and tasks.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> packed = PackedNetwork(net, head="2")
    >>> packed.claim_free_(1), packed.new_task(3)
    (32, 2)
    >>> packed.task = 2; packed(torch.randn(5, 4)).shape
    torch.Size([5, 3])
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.func import functional_call

from ..errors import CheckpointError, ConfigError

__all__ = ["PackedNetwork", "save_packed_network", "load_packed_network"]

_META = "prunekit_packed"
_VERSION = 1


def _buffer_name(fqn: str) -> str:
    return "owner__" + fqn.replace(".", "__")


class PackedNetwork(nn.Module):
    """A backbone shared by tasks, one head per task, and the owner (task) of every backbone weight.

    ``head`` is the FQN of the backbone's classifier (it is replaced per task and never masked); the heads
    live in ``heads`` (``heads["1"]`` is the backbone's own). Owner tensors are int8 buffers, so tasks 1..127.
    """

    def __init__(self, backbone: nn.Module, head: str):
        super().__init__()
        mods = dict(backbone.named_modules())
        if head not in mods or head == "":
            raise ConfigError(f"head={head!r} is not a module of the backbone; name its classifier, e.g. "
                              f"{[n for n, m in mods.items() if isinstance(m, nn.Linear)][-1:]}")
        self.backbone = backbone
        self.head = head
        self.heads = nn.ModuleDict({"1": mods[head]})
        self.fqns = [f"{n}.weight" for n, m in backbone.named_modules()
                     if isinstance(m, (nn.Conv2d, nn.Linear)) and n != head and not n.startswith(head + ".")]
        for f in self.fqns:
            w = backbone.get_parameter(f)
            self.register_buffer(_buffer_name(f), torch.zeros(w.shape, dtype=torch.int8, device=w.device))
        self.task = 1

    # ------------------------------------------------------------------------------------------ ownership
    @property
    def num_tasks(self) -> int:
        return len(self.heads)

    @property
    def packed_tasks(self) -> int:
        """How many tasks own weights (the highest owner index)."""
        return max((int(o.max()) for o in self.owners.values() if o.numel()), default=0)

    @property
    def owners(self) -> dict[str, torch.Tensor]:
        return {f: getattr(self, _buffer_name(f)) for f in self.fqns}

    def task_mask(self, task: int) -> dict[str, torch.Tensor]:
        """``{weight fqn: bool}``: the weights task ``task`` computes with (owned by tasks ``1..task``)."""
        return {f: (o >= 1) & (o <= task) for f, o in self.owners.items()}

    def claim_free_(self, task: int) -> int:
        """Every free weight becomes task ``task``'s; returns how many."""
        n = 0
        for o in self.owners.values():
            free = o == 0
            n += int(free.sum())
            o[free] = task
        return n

    def release_(self, task: int, chosen: dict[str, torch.Tensor]) -> int:
        """Weights ``chosen[fqn]`` (bool, must be owned by ``task``) become free and are set to 0; returns how many."""
        n = 0
        with torch.no_grad():
            for f, sel in chosen.items():
                o = self.owners[f]
                if bool((sel & (o != task)).any()):
                    raise ConfigError(f"release_: {f} has chosen weights not owned by task {task}")
                o[sel] = 0
                self.backbone.get_parameter(f)[sel] = 0
                n += int(sel.sum())
        return n

    def new_task(self, classes: int = 0) -> int:
        """Add a head for the next task (``classes`` outputs; 0 = as many as the current head) and select it."""
        base = self.heads[str(self.num_tasks)]
        head = copy.deepcopy(base)
        if classes and isinstance(head, nn.Linear) and classes != head.out_features:
            head = nn.Linear(head.in_features, classes, bias=head.bias is not None).to(head.weight.device)
        elif classes and not isinstance(head, nn.Linear):
            raise ConfigError(f"new_task(classes={classes}): the head {self.head!r} is a "
                              f"{type(base).__name__}; only a Linear head can change its number of outputs")
        else:
            for m in head.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        self.heads[str(self.num_tasks + 1)] = head
        self.task = self.num_tasks
        return self.task

    # ------------------------------------------------------------------------------------------ inference
    def _set_head(self, task: int) -> None:
        parent, _, name = self.head.rpartition(".")
        setattr(self.backbone.get_submodule(parent) if parent else self.backbone, name, self.heads[str(task)])

    def forward(self, *args, **kwargs):
        task = int(self.task)
        if not 1 <= task <= self.num_tasks:
            raise ConfigError(f"task={task}: this network holds tasks 1..{self.num_tasks}")
        self._set_head(task)
        masks = self.task_mask(task)
        weights = {f: self.backbone.get_parameter(f) * masks[f] for f in self.fqns}
        return functional_call(self.backbone, weights, args, kwargs, strict=False)


def save_packed_network(packed: PackedNetwork, path) -> Path:
    """Write the backbone, every head and the owners to one safetensors file (owners -> per-task masks)."""
    path = Path(path)
    packed._set_head(1)
    tensors = {k: v.detach().cpu().contiguous() for k, v in packed.state_dict().items()
               if not k.startswith("backbone." + packed.head + ".")}
    meta = {"format": "prunekit-packed", "version": _VERSION, "head": packed.head, "tasks": packed.num_tasks,
            "fqns": packed.fqns, "classes": [_out(h) for h in packed.heads.values()]}
    save_file(tensors, str(path), metadata={_META: json.dumps(meta)})
    return path


def _out(head: nn.Module):
    return head.out_features if isinstance(head, nn.Linear) else None


def load_packed_network(path, backbone_factory: Callable[[], nn.Module]) -> PackedNetwork:
    """Rebuild a :class:`PackedNetwork` saved by :func:`save_packed_network` around ``backbone_factory()``."""
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(_META)
    if raw is None:
        raise CheckpointError(f"{path}: not a packed multi-task network (no {_META!r} record); save it with "
                              f"prunekit.masks.tasks.save_packed_network")
    meta = json.loads(raw)
    packed = PackedNetwork(backbone_factory(), meta["head"])
    for classes in meta["classes"][1:]:
        packed.new_task(classes or 0)
    state = load_file(str(path))
    packed._set_head(1)
    missing, unexpected = packed.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("backbone." + packed.head + ".")]
    if missing or unexpected:
        raise CheckpointError(f"{path}: tensors do not match the backbone (missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}); pass the factory of the architecture it was saved from")
    packed.task = packed.num_tasks
    return packed
