"""Atomic, verified training checkpoints: tensors in safetensors, everything else in JSON.

A checkpoint directory holds ``checkpoint.json`` (the commit point: step, epoch, position in the epoch,
optimizer/scheduler settings, RNG states, history, config, and the sha256 of the tensor file) and the
``checkpoint-step<N>.safetensors`` it names (model weights, optimizer buffers, torch RNG states).
Files are written to a temporary name, fsynced and renamed, tensors first, so a run killed at any
moment leaves the previous complete checkpoint in place. Loading verifies the hash and every key and
shape *before* touching the model: a corrupted or mismatched checkpoint raises
:class:`~prunekit.errors.CheckpointError` and changes nothing.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import random
import signal
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from .resume_state import extra_buffers, restore_extra_buffers, sync_masks

log = logging.getLogger(__name__)

INDEX = "checkpoint.json"
_TYPE = "prunekit.checkpoint"
_VERSION = 1


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the complete new one."""
    with atomic_writer(path) as f:
        f.write(data)


_TMP_SUFFIX = ".prunekit-tmp"


class _Signalled(BaseException):
    """Raised inside a save by the SIGTERM/SIGHUP handler so the temporary file is removed on the way out."""


@contextmanager
def _signals_unwind():
    """While active (main thread only), SIGTERM/SIGHUP unwind the stack like Ctrl-C, then are re-delivered."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []

    def handler(signum, frame):
        got.append(signum)
        raise _Signalled(signum)

    old = {}
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is None:
            continue
        try:
            old[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):  # pragma: no cover - not settable here
            pass
    try:
        yield
    except _Signalled:
        pass
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
    if got:  # the previous handler (default: terminate) now gets the signal it would have had
        signal.raise_signal(got[0])
        raise KeyboardInterrupt(f"signal {got[0]} during a save; the file was not changed")


def _sweep_stale(path: Path) -> None:
    """Remove temporary files of ``path`` left by a process that was killed (SIGKILL) while saving."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*{_TMP_SUFFIX}"):
        try:
            pid = int(tmp.name[len(path.name) + 2:].split(".")[0])
        except ValueError:
            continue
        if pid == os.getpid() or _alive(pid):
            continue
        tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _open_unnamed(directory: Path):
    """An unnamed file in ``directory`` (Linux O_TMPFILE): a kill, even SIGKILL, leaves nothing behind."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not Path("/proc/self/fd").is_dir():
        return None
    try:
        return os.open(directory, flag | os.O_WRONLY, 0o666)
    except OSError:  # file system without O_TMPFILE support
        return None


def _link_unnamed(fd: int, tmp: Path) -> None:
    # linkat(AT_SYMLINK_FOLLOW) on /proc/self/fd/N: Python only calls linkat when a dir fd is given
    root = os.open("/", os.O_RDONLY)
    try:
        os.link(f"/proc/self/fd/{fd}", tmp, src_dir_fd=root, follow_symlinks=True)
    finally:
        os.close(root)


@contextmanager
def atomic_writer(path: str | os.PathLike):
    """Yield a binary file object; on a clean exit its bytes replace ``path`` atomically.

    Write to an unnamed (or hidden temporary) file in the same folder, fsync, then rename over ``path``:
    a reader, or a later run after a kill at any point, sees the old file or the complete new one. The
    temporary file is removed on every exit path: exceptions, Ctrl-C, SIGTERM/SIGHUP (unwound, then
    re-delivered), and after SIGKILL by the next save of the same path. New files get ``0666 & ~umask``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create the folder {str(path.parent)!r} for {path.name!r} ({e.strerror}); "
                              f"choose a writable location") from None
    _sweep_stale(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{_TMP_SUFFIX}")
    with _signals_unwind():
        fd = _open_unnamed(path.parent)
        named = fd is None
        try:
            if named:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
        except OSError as e:
            raise CheckpointError(f"cannot write {str(path)!r} ({e.strerror}); choose a writable location, "
                                  f"nothing was changed") from None
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
                if not named:
                    _link_unnamed(f.fileno(), tmp)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. a platform without directory fds
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def tensors_to_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """safetensors bytes of ``tensors`` (copied to CPU, contiguous, with shared storage untied)."""
    from safetensors.torch import save

    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    return save(flat, metadata=metadata)


def read_verified_tensors(path: str | os.PathLike, sha256: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file whose sha256 must equal ``sha256`` (else CheckpointError)."""
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint tensor file {str(path)!r} is missing; the checkpoint is incomplete, "
                              "delete its directory and start again")
    data = path.read_bytes()
    actual = sha256_bytes(data)
    if actual != sha256:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupted: sha256 {actual[:16]}... does not match the "
                              f"recorded {str(sha256)[:16]}...; it was not loaded. Restore the file or retrain")
    try:
        return load(data)
    except Exception as e:  # noqa: BLE001 - any parse failure means a bad file
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be parsed ({e}); it was not loaded") from None


def check_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """CheckpointError listing every missing/unexpected key and shape mismatch between model and tensors."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    shapes = [f"{k}: model {tuple(own[k].shape)} vs checkpoint {tuple(tensors[k].shape)}"
              for k in sorted(set(own) & set(tensors)) if own[k].shape != tensors[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:10]}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:10]}")
        if shapes:
            parts.append(f"shape mismatches {shapes[:10]}")
        raise CheckpointError(f"checkpoint {source!r} does not match the model ({'; '.join(parts)}); the model was "
                              "not changed. Build the same architecture (and pruning) the checkpoint was saved from")


def _rng_states() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    np_state = np.random.get_state()
    py_state = random.getstate()
    return tensors, {"numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
                     "python": [py_state[0], list(py_state[1]), py_state[2]]}


def set_rng_states(tensors: dict[str, torch.Tensor], states: dict[str, Any], prefix: str = "rng") -> None:
    """Restore torch/CUDA/numpy/python RNGs from what a checkpoint recorded under ``prefix``."""
    torch.set_rng_state(tensors[f"{prefix}/torch"])
    cuda = sorted(k for k in tensors if k.startswith(f"{prefix}/cuda/"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    n = states["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), *n[2:]))
    p = states["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def save_checkpoint(directory: str | os.PathLike, model: nn.Module, optimizer=None, scheduler=None, *,
                    meta: dict[str, Any], epoch_start_rng: tuple[dict, dict] | None = None,
                    extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a checkpoint of ``model`` (+ optimizer, scheduler, RNGs and ``meta``) into ``directory``.

    ``meta`` must be JSON-serialisable and carry at least ``step``. The model's masks and other buffers that
    ``state_dict()`` leaves out are saved too; ``extra_tensors`` (e.g. callback state) travel beside them.
    Returns the index file's path.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> _ = save_checkpoint(d, nn.Linear(2, 1), meta={"step": 3})
        >>> load_checkpoint(d, nn.Linear(2, 1))["step"]
        3
    """
    directory = Path(directory)
    step = int(meta["step"])
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    buffers, modes = extra_buffers(model)
    tensors.update(buffers)
    tensors.update(extra_tensors or {})
    rng_t, rng_j = _rng_states()
    tensors.update(rng_t)
    if epoch_start_rng is not None:
        tensors.update({k.replace("rng/", "rng_epoch/", 1): v for k, v in epoch_start_rng[0].items()})
    index: dict[str, Any] = {"type": _TYPE, "version": _VERSION, **meta, "rng": rng_j,
                             "rng_epoch": epoch_start_rng[1] if epoch_start_rng is not None else None,
                             "masks": modes}
    if optimizer is not None:
        opt = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for pid, pstate in opt["state"].items():
            for name, value in pstate.items():
                if torch.is_tensor(value):
                    tensors[f"optim/{pid}/{name}"] = value
                else:
                    scalars.setdefault(str(pid), {})[name] = value
        index["optimizer"] = {"param_groups": opt["param_groups"], "scalars": scalars,
                              "shapes": [list(p.shape) for g in optimizer.param_groups for p in g["params"]]}
    if scheduler is not None:
        index["scheduler"] = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    data = tensors_to_bytes(tensors)
    name = f"checkpoint-step{step:09d}.safetensors"
    atomic_write_bytes(directory / name, data)
    index.update(tensors_file=name, sha256=sha256_bytes(data))
    atomic_write_bytes(directory / INDEX, json.dumps(index, indent=1).encode())
    for old in directory.glob("checkpoint-step*.safetensors"):  # superseded tensor files
        if old.name != name:
            old.unlink(missing_ok=True)
    log.debug("checkpoint at step %d written to %s", step, directory)
    return directory / INDEX


def has_checkpoint(directory: str | os.PathLike | None) -> bool:
    return directory is not None and (Path(directory) / INDEX).is_file()


def read_checkpoint(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The verified (index, tensors) of the checkpoint in ``directory``; CheckpointError if anything is off."""
    directory = Path(directory)
    try:
        index = json.loads((directory / INDEX).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint in {str(directory)!r} (no {INDEX}); pass the checkpoint_dir of an "
                              "earlier run, or set resume=False") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint index {str(directory / INDEX)!r} is corrupted ({e}); it was not loaded") from None
    if not isinstance(index, dict) or index.get("type") != _TYPE or index.get("version") != _VERSION:
        raise CheckpointError(f"{str(directory / INDEX)!r} is not a prunekit checkpoint of version {_VERSION}")
    tensors = read_verified_tensors(directory / str(index.get("tensors_file")), str(index.get("sha256")))
    return index, tensors


def load_checkpoint(directory: str | os.PathLike, model: nn.Module, optimizer=None, scheduler=None, *,
                    restore_rng: bool = False) -> dict[str, Any]:
    """Load a checkpoint into ``model`` (+ optimizer, scheduler); returns its index (meta) dict.

    Everything is verified first (hash, keys, shapes, optimizer layout); on any mismatch a
    CheckpointError is raised and nothing was modified. The verified tensors are kept in the returned
    dict under ``"_tensors"`` (RNG states for a resume).
    """
    index, tensors = read_checkpoint(directory)
    weights = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    check_state_dict(model, weights, str(directory))
    opt_state = None
    if optimizer is not None:
        opt_state = _optimizer_state(index, tensors, optimizer, str(directory))
    if "masks" in index:  # the checkpoint's masks (and modes) first: loading the weights applies them
        sync_masks(model, index["masks"], tensors)
        restore_extra_buffers(model, tensors, str(directory))
    model.load_state_dict(weights)
    restore_extra_buffers(model, tensors, str(directory))  # again: the load hook resets the dormant weights
    if opt_state is not None:
        optimizer.load_state_dict(opt_state)
    if scheduler is not None and "scheduler" in index:
        scheduler.load_state_dict({**scheduler.state_dict(), **index["scheduler"]})
    if restore_rng:
        set_rng_states(tensors, index["rng"])
    index["_tensors"] = tensors
    return index


def _optimizer_state(index: dict, tensors: dict, optimizer, source: str) -> dict:
    saved = index.get("optimizer")
    shapes = [list(p.shape) for g in optimizer.param_groups for p in g["params"]]
    if saved is None or saved["shapes"] != shapes or len(saved["param_groups"]) != len(optimizer.param_groups):
        raise CheckpointError(f"checkpoint {source!r} holds no optimizer state for these parameters (shapes differ "
                              "or it was saved without an optimizer); the model was not changed. Resume with the "
                              "same model and optimizer, or start a new run")
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, pid, name = key.split("/", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, scalars in saved["scalars"].items():
        state.setdefault(int(pid), {}).update(scalars)
    return {"state": state, "param_groups": saved["param_groups"]}


def write_with_record(path: str | os.PathLike, tensors: dict[str, torch.Tensor], key: str, record: dict, *,
                      hash_field: str = "sha256") -> dict:
    """Write ``tensors`` to ``path`` (one safetensors file) with ``record`` in its header, atomically.

    ``record`` travels as JSON in the header's metadata field under ``key``, with ``hash_field`` set to the
    hash of the tensor bytes (everything after the header); returns the record as written.
    """
    import struct

    blob = memoryview(tensors_to_bytes(tensors))
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(bytes(blob[8:8 + n]))
    payload = blob[8 + n:]
    record = {**record, hash_field: hashlib.sha256(payload).hexdigest()}
    header["__metadata__"] = {**header.get("__metadata__", {}), key: json.dumps(record)}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # safetensors aligns the tensor data to 8 bytes
    with atomic_writer(path) as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        f.write(payload)
    return record


def read_record(path: str | os.PathLike, key: str) -> dict | None:
    """The record stored under ``key`` in the safetensors header of ``path`` (None if there is none)."""
    import struct

    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
            if n < 2 or n > min(100_000_000, size - 8):
                return None
            header = json.loads(f.read(n))
        return json.loads(header["__metadata__"][key])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_tensors_with_record(path: str | os.PathLike, sha256: str) -> dict[str, torch.Tensor]:
    """The tensors of a file written by :func:`write_with_record`, whose tensor bytes must hash to ``sha256``."""
    import struct

    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"tensor file {str(path)!r} is missing; restore it or train it again")
    data = memoryview(path.read_bytes())
    n = struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else len(data)
    actual = hashlib.sha256(data[8 + n:]).hexdigest() if n <= len(data) - 8 else "truncated"
    if actual != sha256:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupted: sha256 {actual[:16]}... does not match the "
                              f"recorded {str(sha256)[:16]}...; it was not loaded. Restore the file or retrain")
    try:
        return load(bytes(data))
    except Exception as e:  # noqa: BLE001 - any parse failure means a bad file
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be parsed ({e}); it was not loaded") from None
