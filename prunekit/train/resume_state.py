"""What a checkpoint needs beyond ``state_dict`` for a bit-identical resume, and per-call checkpoint folders.

* **Masks and other non-persistent buffers** (``prunekit.masks`` keeps its masks and the dormant weights of
  feedback mode out of ``state_dict()``): :func:`extra_buffers` / :func:`restore_extra_buffers`.
* **Callback state** (selection counters, masks, gates a callback holds as attributes):
  :func:`capture_callbacks` walks each callback's attributes and records tensors and plain values;
  :func:`restore_callbacks` writes them back *in place* (same tensor, list, dict and object identities, so
  references the method holds stay valid). A callback may instead define ``state_dict()`` and
  ``load_state_dict(state)`` (tensors and JSON values). Model parameters, submodules, functions, partials
  and hook handles are not state (the model is restored by the checkpoint, hooks are re-registered by
  ``on_train_start``); ``random.Random`` and ``torch.Generator`` states are recorded. Anything else (an
  optimizer other than fit's, a data loader, a numpy generator, another library's object) makes the callback
  *unrestorable*: :class:`Unrestorable` names it.
* **Per-call folders** (:func:`fit_checkpoints`): inside the context every :func:`~prunekit.train.fit` call
  without its own ``checkpoint_dir`` checkpoints into ``<folder>/fit-001``, ``fit-002``, ... numbered in call
  order, and resumes from it when ``resume`` is set: a multi-round method resumes into the right round, and
  calls that had finished restore their final state instead of training again. A call whose callbacks are
  unrestorable is not checkpointed: on resume it trains again from its start (fit seeds itself, so the
  result is the same), and the context lists it in ``redone``.
"""
from __future__ import annotations

import contextvars
import dataclasses
import functools
import logging
import math
import random
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..errors import CheckpointError
from ..masks import install_masks_, mask_modes, remove_masks_
from ..masks._engine import MASK_PREFIX, _split

log = logging.getLogger(__name__)

EXTRA = "extra/"  # tensor-name prefix of non-persistent buffers in a checkpoint
CALLBACK = "callback/"  # tensor-name prefix of callback state


class Unrestorable(Exception):
    """A callback holds state that cannot be written to a checkpoint (the message names where)."""


# ----------------------------------------------------------------------------------- non-persistent buffers
def extra_buffers(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The model's buffers that ``state_dict()`` leaves out (masks, dormant weights) and the mask modes."""
    persistent = set(model.state_dict())
    tensors = {f"{EXTRA}{name}": buf for name, buf in model.named_buffers() if name not in persistent}
    return tensors, mask_modes(model)


def sync_masks(model: nn.Module, modes: dict[str, str], tensors: dict[str, torch.Tensor]) -> None:
    """Install/remove masks so that the model holds exactly the masks (and modes) a checkpoint recorded."""
    now = mask_modes(model)
    gone = [f for f in now if now[f] != modes.get(f)]
    if gone:
        remove_masks_(model, gone, apply=False)
    for mode in sorted(set(modes.values())):
        new = {}
        for fqn, m in modes.items():
            if m != mode or now.get(fqn) == m:
                continue
            mod, name = _split(fqn)
            key = f"{EXTRA}{mod + '.' if mod else ''}{MASK_PREFIX}{name}"
            if key not in tensors:
                raise CheckpointError(f"checkpoint records a {mode} mask on {fqn!r} but not its values; it is "
                                      f"incomplete, start the run again")
            new[fqn] = tensors[key].bool()
        if new:
            install_masks_(model, new, mode=mode)


@torch.no_grad()
def restore_extra_buffers(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy the checkpoint's non-persistent buffers into the model's, in place (shapes must agree)."""
    own = dict(model.named_buffers())
    for key, value in tensors.items():
        if not key.startswith(EXTRA):
            continue
        name = key[len(EXTRA):]
        if name not in own or own[name].shape != value.shape:
            raise CheckpointError(f"checkpoint {source!r}: buffer {name!r} does not fit the model; the model was "
                                  f"built differently from the one that was checkpointed")
        own[name].copy_(value)


# --------------------------------------------------------------------------------------------- callbacks
_SKIP = {"__skip__": 1}


def _model_storages(model: nn.Module) -> tuple[set[int], set[int]]:
    ptrs = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers()) if t.numel()}
    return ptrs, {id(m) for m in model.modules()}


class _Capture:
    def __init__(self, model: nn.Module, restored=()):
        self.storages, self.modules = _model_storages(model)
        self.restored = {id(x) for x in restored if x is not None}  # fit's optimizer and scheduler
        self.tensors: dict[str, torch.Tensor] = {}
        self.seen: set[int] = set()

    def value(self, v: Any, where: str) -> Any:
        if v is None or isinstance(v, (bool, int, str)):
            return v
        if isinstance(v, float):
            return v if math.isfinite(v) else {"__float__": repr(v)}
        if isinstance(v, (types.FunctionType, types.BuiltinFunctionType, types.MethodType, functools.partial,
                          RemovableHandle, type, torch.dtype, torch.device)):
            return _SKIP
        if torch.is_tensor(v):
            if v.numel() and v.untyped_storage().data_ptr() in self.storages:
                return _SKIP  # a view of a model parameter or buffer: the checkpoint's weights restore it
            key = f"{CALLBACK}{len(self.tensors)}"
            self.tensors[key] = v.detach()
            return {"__tensor__": key, "device": str(v.device), "grad": bool(v.requires_grad)}
        if (isinstance(v, nn.Module) and id(v) in self.modules) or id(v) in self.restored:
            return _SKIP  # restored by the checkpoint (the model, fit's optimizer and scheduler)
        if isinstance(v, (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler)):
            raise Unrestorable(f"{where} is an optimizer or scheduler that fit does not use")
        if isinstance(v, random.Random):
            version, internal, gauss = v.getstate()
            return {"__random__": [version, list(internal), gauss]}
        if isinstance(v, torch.Generator):
            return {"__generator__": self.value(v.get_state(), where)}
        if id(v) in self.seen:
            return _SKIP  # the same object again: restored in place where it was first met
        self.seen.add(id(v))
        if isinstance(v, (list, tuple)):
            return {"__list__" if isinstance(v, list) else "__tuple__": [self.value(x, f"{where}[{i}]")
                                                                         for i, x in enumerate(v)]}
        if isinstance(v, dict):
            return {"__dict__": [[self.value(k, f"{where} key"), self.value(x, f"{where}[{k!r}]")]
                                 for k, x in v.items()]}
        if isinstance(v, (set, frozenset)):
            return {"__set__": sorted((self.value(x, where) for x in v), key=repr)}
        if isinstance(v, nn.Module):
            return {"__module__": self.value(dict(v.state_dict(keep_vars=True)), f"{where}.state_dict()")}
        if type(v).__module__.startswith("prunekit.") and hasattr(v, "__dict__"):
            return {"__object__": self.attrs(v, where)}
        raise Unrestorable(f"{where} is a {type(v).__module__}.{type(v).__qualname__}")

    def attrs(self, obj: Any, where: str) -> dict:
        return {k: self.value(x, f"{where}.{k}") for k, x in vars(obj).items()}


def capture_callbacks(callbacks, model: nn.Module, restored=()) -> tuple[list, dict[str, torch.Tensor]]:
    """(JSON state, tensors) of ``callbacks``; raises :class:`Unrestorable` naming what cannot be saved.

    ``restored``: objects the checkpoint restores itself (fit's optimizer and scheduler, which a callback may
    have replaced in ``on_train_start``): a callback's reference to them is not state.
    """
    cap = _Capture(model, restored)
    states = []
    for i, cb in enumerate(callbacks):
        where = f"callback {type(cb).__name__}"
        if callable(getattr(cb, "state_dict", None)) and callable(getattr(cb, "load_state_dict", None)):
            states.append({"__explicit__": cap.value(cb.state_dict(), where)})
        else:
            cap.seen.add(id(cb))
            states.append(cap.attrs(cb, where))
    return states, cap.tensors


def check_restorable(callbacks, model: nn.Module) -> str | None:
    """None when every callback's state can be checkpointed, else what cannot."""
    try:
        capture_callbacks(callbacks, model)
    except Unrestorable as e:
        return str(e)
    return None


class _Restore:
    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def value(self, old: Any, s: Any) -> Any:
        """The restored value; containers, tensors and objects are written into ``old`` when it fits."""
        if not isinstance(s, dict):
            return s
        if s == _SKIP:
            return old
        if "__float__" in s:
            return float(s["__float__"])
        if "__tensor__" in s:
            t = self.tensors[s["__tensor__"]].to(s["device"])
            if torch.is_tensor(old) and old.shape == t.shape and old.dtype == t.dtype and old.device == t.device:
                with torch.no_grad():
                    old.copy_(t)
                return old
            return t.requires_grad_(s["grad"]) if t.is_floating_point() else t
        if "__list__" in s or "__tuple__" in s:
            items = s.get("__list__", s.get("__tuple__"))
            olds = list(old) if isinstance(old, (list, tuple)) and len(old) == len(items) else [None] * len(items)
            new = [self.value(o, x) for o, x in zip(olds, items)]
            if "__list__" in s and isinstance(old, list):
                old[:] = new
                return old
            return new if "__list__" in s else tuple(new)
        if "__dict__" in s:
            prev = old if isinstance(old, dict) else {}
            new = {}
            for k, x in s["__dict__"]:
                k = self.value(None, k)
                k = tuple(k) if isinstance(k, list) else k
                new[k] = self.value(prev.get(k), x)
            if isinstance(old, dict):
                old.clear()
                old.update(new)
                return old
            return new
        if "__set__" in s:
            new = {self.value(None, x) for x in s["__set__"]}
            if isinstance(old, set):
                old.clear()
                old.update(new)
                return old
            return new
        if "__random__" in s:
            version, internal, gauss = s["__random__"]
            rng = old if isinstance(old, random.Random) else random.Random()
            rng.setstate((version, tuple(internal), gauss))
            return rng
        if "__generator__" in s:
            gen = old if isinstance(old, torch.Generator) else torch.Generator()
            gen.set_state(self.value(None, s["__generator__"]))
            return gen
        if "__module__" in s:
            sd = old.state_dict(keep_vars=True)
            self.value(sd, s["__module__"])  # tensors copied in place
            return old
        if "__object__" in s:
            self.attrs(old, s["__object__"])
            return old
        return s

    def attrs(self, obj: Any, state: dict) -> None:
        for k, s in state.items():
            old = getattr(obj, k, None)
            new = self.value(old, s)
            if new is old or (type(new) is type(old) and isinstance(new, (bool, int, float, str)) and new == old):
                continue
            try:
                setattr(obj, k, new)
            except dataclasses.FrozenInstanceError:
                object.__setattr__(obj, k, new)


def restore_callbacks(callbacks, states: list, tensors: dict[str, torch.Tensor]) -> None:
    """Write the state recorded by :func:`capture_callbacks` back into ``callbacks`` (in place)."""
    if len(states) != len(callbacks):  # other callbacks than the checkpointed run's: nothing to match them to
        log.warning("the checkpoint holds the state of %d callbacks but this run has %d; their state is not "
                    "restored", len(states), len(callbacks))
        return
    r = _Restore(tensors)
    for cb, s in zip(callbacks, states):
        if "__explicit__" in s:
            cb.load_state_dict(r.value(None, s["__explicit__"]))
        else:
            r.attrs(cb, s)


# ------------------------------------------------------------------------------------ per-call folders
@dataclasses.dataclass
class FitCheckpoints:
    """The state of a :func:`fit_checkpoints` context: its folder, whether to resume, the calls so far."""

    folder: Path
    resume: bool = False
    every: int = 0  # optimizer steps between checkpoints (0: epoch ends only)
    calls: int = 0
    redone: list = dataclasses.field(default_factory=list)  # (call number, why) of calls not checkpointed


_ACTIVE: contextvars.ContextVar[FitCheckpoints | None] = contextvars.ContextVar("prunekit_fit_checkpoints",
                                                                                 default=None)


@contextmanager
def fit_checkpoints(folder: str | Path, *, resume: bool = False, every: int = 0):
    """Checkpoint every :func:`~prunekit.train.fit` call inside into ``folder/fit-NNN`` (call order).

    Example:
        >>> import tempfile, torch
        >>> from prunekit.train import TrainConfig, fit
        >>> data = [(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))]
        >>> d = tempfile.mkdtemp()
        >>> with fit_checkpoints(d) as session:
        ...     _ = fit(torch.nn.Linear(2, 2), data, TrainConfig(progress=False))
        ...     _ = fit(torch.nn.Linear(2, 2), data, TrainConfig(progress=False))
        >>> session.calls, sorted(p.name for p in Path(d).iterdir())
        (2, ['fit-001', 'fit-002'])
    """
    session = FitCheckpoints(Path(folder), bool(resume), int(every))
    token = _ACTIVE.set(session)
    try:
        yield session
    finally:
        _ACTIVE.reset(token)


def session_config(cfg, callbacks, model: nn.Module):
    """``cfg`` with the current :func:`fit_checkpoints` folder of this call (unchanged outside one)."""
    session = _ACTIVE.get()
    if session is None or cfg.checkpoint_dir is not None:
        return cfg
    session.calls += 1
    n = session.calls
    why = check_restorable(callbacks, model)
    if why is not None:
        session.redone.append((n, why))
        log.info("training call %d is not checkpointed (%s cannot be saved): a resumed run trains it again from "
                 "its start, with the same result", n, why)
        return cfg
    return cfg.replace(checkpoint_dir=str(session.folder / f"fit-{n:03d}"), checkpoint_every=session.every,
                       resume=session.resume)
