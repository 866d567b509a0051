"""Save and load pruned models without pickle: safetensors weights plus a JSON sidecar of shapes.

``save(model, path)`` writes ``path`` (safetensors) and ``path + ".json"`` (every tensor's shape, every
module's integer size attributes, tied-weight aliases and the sha256 of the weights file). ``load(path,
model_factory)`` builds the original architecture, resizes its tensors and module attributes to the
saved ones, checks the hash and loads the weights strictly.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import CheckpointError, ConfigError
from .surgery.mha import PrunableMultiheadAttention

__all__ = ["save", "load"]
_FORMAT = "prunekit-pruned"
_VERSION = 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _size_attrs(module: nn.Module) -> dict:
    out = {}
    for k, v in vars(module).items():
        if k.startswith("_") or isinstance(v, bool):
            continue
        if isinstance(v, int) or (isinstance(v, tuple) and v and all(isinstance(x, int) and not isinstance(x, bool)
                                                                         for x in v)):
            out[k] = list(v) if isinstance(v, tuple) else v
    return out


def sidecar(path) -> Path:
    return Path(str(path) + ".json")


def save(model: nn.Module, path) -> Path:
    """Write ``model``'s weights to ``path`` (safetensors) and its shapes to ``path + '.json'``.

    Example:
        >>> import tempfile, os, torch, prunekit as pk
        >>> from prunekit.testing import models
        >>> m, x = models()["chain"]()
        >>> _ = pk.prune_(m, example_inputs=x, sparsity=0.5)
        >>> d = tempfile.mkdtemp()
        >>> _ = pk.save(m, os.path.join(d, "m.safetensors"))
        >>> m2 = pk.load(os.path.join(d, "m.safetensors"), lambda: models()["chain"]()[0])
        >>> m2.conv1.out_channels
        4
    """
    from safetensors.torch import save_file

    path = Path(path)
    state = model.state_dict()
    tensors, aliases, seen = {}, {}, {}
    for k, v in state.items():
        key = (v.data_ptr(), tuple(v.shape), v.dtype) if v.numel() else None
        if key is not None and key in seen:
            aliases[k] = seen[key]
            continue
        if key is not None:
            seen[key] = k
        tensors[k] = v.detach().cpu().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)
    meta = {"format": _FORMAT, "version": _VERSION, "sha256": _sha256(path),
            "shapes": {k: list(v.shape) for k, v in state.items()}, "aliases": aliases,
            "modules": {n: _size_attrs(m) for n, m in model.named_modules()},
            # nn.MultiheadAttention modules the engine turned into their op-by-op twin (surgery.mha)
            "prunable_mha": [n for n, m in model.named_modules() if isinstance(m, PrunableMultiheadAttention)]}
    sidecar(path).write_text(json.dumps(meta, indent=1))
    return path


def load(path, model_factory: Callable[[], nn.Module]) -> nn.Module:
    """Rebuild a model saved by :func:`save` on ``model_factory()`` (the original architecture)."""
    from safetensors.torch import load_file

    from .surgery import Transaction, set_tensor_
    from .surgery.mha import mark_pruned_, supported

    path = Path(path)
    if not path.exists() or not sidecar(path).exists():
        raise CheckpointError(f"path={str(path)!r}: need both the weights file and its {sidecar(path).name!r} "
                              f"sidecar written by prunekit.save; check the path")
    try:
        meta = json.loads(sidecar(path).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{sidecar(path).name!r} is not valid JSON ({e}); re-save the model") from None
    if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
        raise CheckpointError(f"{sidecar(path).name!r} has format {meta.get('format')!r} version "
                              f"{meta.get('version')!r}; expected {_FORMAT!r} version {_VERSION}")
    digest = _sha256(path)
    if digest != meta.get("sha256"):
        raise CheckpointError(f"weights file {path.name!r} has sha256 {digest[:12]}… but the sidecar records "
                              f"{str(meta.get('sha256'))[:12]}…; the file was changed or corrupted")
    if not callable(model_factory):
        raise ConfigError(f"model_factory={model_factory!r} must be a callable returning a fresh model of the "
                          f"original architecture, e.g. lambda: torchvision.models.resnet18()")
    model = model_factory()
    state = model.state_dict()
    extra = sorted(set(meta["shapes"]) - set(state))
    missing = sorted(set(state) - set(meta["shapes"]))
    if extra or missing:
        raise CheckpointError(f"checkpoint does not match the architecture of model_factory(): "
                              f"unexpected {extra[:5]}, missing {missing[:5]}; pass the factory of the model "
                              f"that was pruned")
    tx = Transaction()
    for fqn, shape in meta["shapes"].items():
        if list(state[fqn].shape) != list(shape):
            old = state[fqn]
            set_tensor_(model, fqn, torch.empty(shape, dtype=old.dtype, device=old.device), tx)
    named = dict(model.named_modules())
    for mfqn in meta.get("prunable_mha", []):
        mod = named.get(mfqn)
        if not isinstance(mod, nn.MultiheadAttention) or not (supported(mod) or
                                                              isinstance(mod, PrunableMultiheadAttention)):
            raise CheckpointError(f"module {mfqn!r} is a pruned nn.MultiheadAttention in the checkpoint but "
                                  f"{type(mod).__name__} in model_factory()'s model; pass the factory of the "
                                  f"model that was pruned")
        mark_pruned_(mod, tx.set)
    for mfqn, attrs in meta["modules"].items():
        mod = named.get(mfqn)
        if mod is None:
            raise CheckpointError(f"module {mfqn!r} of the checkpoint is not in model_factory()'s model")
        for k, v in attrs.items():
            cur = getattr(mod, k, None)
            v = tuple(v) if isinstance(v, list) else v
            if cur != v:
                object.__setattr__(mod, k, v)
    weights = load_file(str(path))
    for k, src in meta["aliases"].items():
        weights[k] = weights[src]
    model.load_state_dict(weights, strict=True)
    return model
