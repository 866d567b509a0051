"""Save and load pruned models without pickle: one safetensors file that carries its own shapes.

``save(model, path)`` writes ``path``: the weights, and in the safetensors header's metadata field every
tensor's shape, every module's integer size attributes, tied-weight aliases and the sha256 of the tensor
bytes. The file is written to a temporary file, fsynced and renamed over ``path``, so a kill at any moment
leaves the old file or the complete new one (see :func:`prunekit.train.checkpoint.atomic_writer`).
``load(path, model_factory)`` builds the original architecture, resizes its tensors and module attributes
to the saved ones, checks the hash and loads the weights strictly. It also reads the older two-file form
(weights plus a ``path + ".json"`` sidecar).
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import CheckpointError, ConfigError
from .models.resolution import ResolutionConv
from .surgery.mha import PrunableMultiheadAttention, mark_pruned_, supported
from .surgery import Transaction, set_tensor_
from .surgery.factorize import BasisConv, Factorized, HingeConv
from .surgery.stripe import StripeConv2d, stripe_eligible
from .train.checkpoint import write_with_record

__all__ = ["save", "load"]
_FORMAT = "prunekit-pruned"
_VERSION = 1
_META_KEY = "prunekit"  # key of the safetensors header's __metadata__ that holds our record
_MAX_HEADER = 100_000_000  # safetensors' own limit on the header size


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
    """Write ``model``'s weights and shapes to ``path`` (one safetensors file), atomically.

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
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"path={str(path)!r} is a folder; pass a file path such as "
                          f"{str(path / 'model.safetensors')!r}")
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
    meta = {"format": _FORMAT, "version": _VERSION, "shapes": {k: list(v.shape) for k, v in state.items()},
            "aliases": aliases, "modules": {n: _size_attrs(m) for n, m in model.named_modules()},
            # nn.MultiheadAttention modules the engine turned into their op-by-op twin (surgery.mha)
            "prunable_mha": [n for n, m in model.named_modules() if isinstance(m, PrunableMultiheadAttention)],
            # layers replaced by their factorised form (surgery.factorize), rebuilt on load before the resize
            "factorized": {n: {"bias_in_A": m.rot_in.bias is not None} for n, m in model.named_modules()
                           if isinstance(m, Factorized)},
            # convs computed at a reduced input resolution (models.resolution, method mdp): fqn -> scale
            "resolution": {n: m.scale for n, m in model.named_modules() if isinstance(m, ResolutionConv)},
            # convs split into basis filters + a 1x1 A (surgery.factorize.HingeConv, method hinge)
            "split": [n for n, m in model.named_modules() if isinstance(m, HingeConv)],
            # convs replaced by a shared-basis form (surgery.factorize.BasisConv, method filter-basis)
            "basis": {n: [m.split, m.n_basis] for n, m in model.named_modules() if isinstance(m, BasisConv)},
            # convs in stripe form (surgery.stripe.StripeConv2d, method swp): fqn -> the kernel offsets computed
            "stripes": {n: [list(o) for o in m.offsets] for n, m in model.named_modules()
                        if isinstance(m, StripeConv2d)}}
    write_with_record(path, tensors, _META_KEY, meta, hash_field="payload_sha256")
    try:  # a sidecar left by an older two-file save of this path is stale now (and ignored by load)
        sidecar(path).unlink(missing_ok=True)
    except OSError:
        pass
    return path


def _header(path: Path) -> tuple[dict, int]:
    """The safetensors header of ``path`` and the offset of its tensor bytes (CheckpointError if not one)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        if n < 2 or n > min(_MAX_HEADER, size - 8):
            raise CheckpointError(f"path={str(path)!r} is not a safetensors file written by prunekit.save "
                                  f"(bad header); pass a file saved with prunekit.save")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            header = None
    if not isinstance(header, dict):
        raise CheckpointError(f"path={str(path)!r} is not a safetensors file written by prunekit.save "
                              f"(unreadable header); pass a file saved with prunekit.save")
    return header, 8 + n


def _sha256_from(path: Path, offset: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_meta(path: Path) -> dict:
    """The record of a saved model: in the file's header, or (older form) in its ``.json`` sidecar."""
    if not path.is_file():
        raise CheckpointError(f"path={str(path)!r}: no such file; pass a model file written by prunekit.save "
                              f"(older saves also need their {sidecar(path).name!r} sidecar)")
    header, offset = _header(path)
    embedded = (header.get("__metadata__") or {}).get(_META_KEY)
    if embedded is not None:
        try:
            meta = json.loads(embedded)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"the record inside {path.name!r} is not valid JSON ({e}); "
                                  f"re-save the model") from None
        digest, recorded, source = _sha256_from(path, offset), meta.get("payload_sha256"), path.name
    else:
        if not sidecar(path).exists():
            raise CheckpointError(f"path={str(path)!r} has no prunekit record in its header and no "
                                  f"{sidecar(path).name!r} sidecar beside it; pass a file written by prunekit.save")
        try:
            meta = json.loads(sidecar(path).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{sidecar(path).name!r} is not valid JSON ({e}); re-save the model") from None
        digest, recorded, source = _sha256(path), meta.get("sha256") if isinstance(meta, dict) else None, \
            sidecar(path).name
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
        got = meta if not isinstance(meta, dict) else (meta.get("format"), meta.get("version"))
        raise CheckpointError(f"{source!r} has format/version {got!r}; expected {_FORMAT!r} version {_VERSION}")
    if digest != recorded:
        raise CheckpointError(f"weights file {path.name!r} has sha256 {digest[:12]}… but {source!r} records "
                              f"{str(recorded)[:12]}…; the file was changed or corrupted")
    return meta


def _refactorize(model: nn.Module, factorized: dict) -> None:
    """Put a (rank-1, resized below) :class:`Factorized` shell in place of every layer saved factorised."""
    named = dict(model.named_modules())
    for fqn, rec in factorized.items():
        layer = named.get(fqn)
        parent = named.get(fqn.rpartition(".")[0]) if fqn else None
        if not isinstance(layer, (nn.Linear, nn.Conv2d)) or parent is None:
            raise CheckpointError(f"module {fqn!r} is a factorised layer in the checkpoint but "
                                  f"{type(layer).__name__} in model_factory()'s model; pass the factory of the "
                                  f"model that was pruned")
        setattr(parent, fqn.rpartition(".")[2], Factorized.shell(layer, bias_in_A=bool(rec.get("bias_in_A"))))


def _resplit(model: nn.Module, fqns: list) -> None:
    """Put a :class:`HingeConv` (full rank, resized below) in place of every conv saved split."""
    named = dict(model.named_modules())
    for fqn in fqns:
        mod = named.get(fqn)
        if not isinstance(mod, nn.Conv2d):
            raise CheckpointError(f"module {fqn!r} is a split conv (basis + A) in the checkpoint but "
                                  f"{type(mod).__name__} in model_factory()'s model; pass the factory of the "
                                  f"model that was pruned")
        model.set_submodule(fqn, HingeConv.from_conv(mod))


def _rebasis(model: nn.Module, shapes: dict) -> None:
    """Put a :class:`BasisConv` shell (``{fqn: [split, n_basis]}``) in place of every conv saved in basis form."""
    named = dict(model.named_modules())
    for fqn, (split, n_basis) in shapes.items():
        mod = named.get(fqn)
        if not isinstance(mod, nn.Conv2d):
            raise CheckpointError(f"module {fqn!r} is a basis conv in the checkpoint but {type(mod).__name__} in "
                                  f"model_factory()'s model; pass the factory of the model that was pruned")
        model.set_submodule(fqn, BasisConv.shell(mod, int(split), int(n_basis)))


def _restripe(model: nn.Module, stripes: dict, shapes: dict) -> None:
    """Put a :class:`StripeConv2d` shell (its saved offsets, filter indices of the saved lengths; the weights
    are resized and loaded below) in place of every conv saved in stripe form."""
    named = dict(model.named_modules())
    for fqn, offsets in stripes.items():
        mod = named.get(fqn)
        if not isinstance(mod, nn.Conv2d) or stripe_eligible(mod) is not None:
            raise CheckpointError(f"module {fqn!r} is a stripe-form conv in the checkpoint but "
                                  f"{type(mod).__name__} in model_factory()'s model; pass the factory of the "
                                  f"model that was pruned")
        keys = [f"{fqn}.index_{k}" if fqn else f"index_{k}" for k in range(len(offsets))]
        if any(k not in shapes for k in keys):
            raise CheckpointError(f"the checkpoint's stripe conv {fqn!r} lacks the filter indices of its "
                                  f"{len(offsets)} offsets; re-save the model")
        index = [torch.zeros(shapes[k][0], dtype=torch.long) for k in keys]
        shell = StripeConv2d(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                             mod.dilation, [tuple(o) for o in offsets], index, mod.bias is not None)
        w = mod.weight
        model.set_submodule(fqn, shell.to(device=w.device, dtype=w.dtype))


def _rebuild_resolution_convs(model: nn.Module, scales: dict) -> None:
    """Turn the saved reduced-resolution convs of ``model`` (``{fqn: scale}``) into :class:`ResolutionConv`."""
    named = dict(model.named_modules())
    for fqn, scale in scales.items():
        mod = named.get(fqn)
        if not isinstance(mod, nn.Conv2d):
            raise CheckpointError(f"module {fqn!r} is a reduced-resolution conv in the checkpoint but "
                                  f"{type(mod).__name__} in model_factory()'s model; pass the factory of the "
                                  f"model that was pruned")
        parent, _, name = fqn.rpartition(".")
        setattr(named[parent] if parent else model, name, ResolutionConv.from_conv(mod, float(scale)))


def load(path, model_factory: Callable[[], nn.Module]) -> nn.Module:
    """Rebuild a model saved by :func:`save` on ``model_factory()`` (the original architecture)."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = _read_meta(path)
    if not callable(model_factory):
        raise ConfigError(f"model_factory={model_factory!r} must be a callable returning a fresh model of the "
                          f"original architecture, e.g. lambda: torchvision.models.resnet18()")
    model = model_factory()
    _refactorize(model, meta.get("factorized", {}))
    _rebuild_resolution_convs(model, meta.get("resolution", {}))
    _resplit(model, meta.get("split", []))
    _rebasis(model, meta.get("basis", {}))
    _restripe(model, meta.get("stripes", {}), meta["shapes"])
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
    try:
        weights = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure means a bad file
        raise CheckpointError(f"weights file {path.name!r} cannot be read ({e}); re-save the model") from None
    for k, src in meta["aliases"].items():
        weights[k] = weights[src]
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"weights file {path.name!r} does not fit its own record ({str(e)[:300]}); "
                              f"re-save the model") from None
    return model
