"""Mask storage and the hooks that keep masks true in any training loop.

A mask is a 0/1 tensor shaped like its parameter (in the parameter's dtype, so the hooks multiply without
a conversion; :func:`get_masks` hands out bool tensors), stored on the parameter's module as a
*non-persistent* buffer ``_pk_mask_<name>``: it follows ``.to(device)``, is broadcast by DDP with the other
buffers, and never appears in ``state_dict()``. Three hooks per masked module keep it true:

* a forward pre-hook re-applies the mask before every forward, so no optimizer (momentum, weight decay,
  Adam's state from before pruning) can make a pruned weight take part in a forward;
* in ``"hard"`` mode, a gradient hook on each masked parameter zeroes the pruned gradient entries, so the
  optimizer state for pruned weights is never fed and the stored weights stay exactly zero after a step;
* a global optimizer step post-hook (``torch.optim.optimizer.register_optimizer_step_post_hook``, so it
  covers optimizers prunekit never sees) re-applies the masks of the parameters an optimizer just stepped
  and, in hard mode, zeroes their optimizer state (momentum, Adam moments) at pruned entries;
* a state-dict pre-hook re-applies the mask before ``state_dict()`` (a step after the last forward must not
  leak into a checkpoint) and a load post-hook re-applies it after ``load_state_dict()`` (rewinding).

In ``"feedback"`` mode (Dynamic Network Surgery, DPF) the forward still sees ``W * mask`` but the gradient
reaches every weight, and the pruned values are kept in a second non-persistent buffer
``_pk_dormant_<name>``, so a weight whose mask entry comes back resumes from its own value.
"""
from __future__ import annotations

import contextlib
import logging
import os
import weakref
from typing import Iterable

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, PruneError
from .._registry import unknown_name_message

log = logging.getLogger(__name__)

MASK_PREFIX = "_pk_mask_"
DORMANT_PREFIX = "_pk_dormant_"
MODES = ("hard", "feedback")

_MASKED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()  # modules holding masks (for the step hook)
_STEP_HOOK = None


def _split(fqn: str) -> tuple[str, str]:
    module, _, name = fqn.rpartition(".")
    return module, name


def _sync(module: nn.Module, name: str, mode: str) -> None:
    """Make the parameter equal ``full * mask`` (feedback: keep ``full * ~mask`` aside)."""
    param = getattr(module, name)
    mask = getattr(module, MASK_PREFIX + name)
    if mode == "feedback":
        dormant = getattr(module, DORMANT_PREFIX + name)
        full = param.data + dormant  # dormant is zero where the mask keeps, param is zero where it prunes
        param.data.copy_(full * mask)
        dormant.copy_(full - param.data)
    else:
        param.data.mul_(mask)


class _GradMask:
    """Gradient hook: zero the gradient of pruned entries (looks the mask up, so .to(device) is fine)."""

    def __init__(self, module: nn.Module, name: str):
        self.module = weakref.ref(module)
        self.name = name

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        module = self.module()
        if module is None:
            return grad
        return grad * getattr(module, MASK_PREFIX + self.name)


class _MaskHook:
    """Forward pre-hook of one module: re-applies its masks; in hard mode, (re)attaches gradient hooks.

    Gradient hooks live on the Parameter objects, which ``copy.deepcopy`` or a user's reassignment replace;
    the pre-hook notices a new Parameter and hooks it before the forward that will produce its gradient.
    """

    def __init__(self, modes: dict[str, str]):
        self.modes = dict(modes)  # parameter name -> "hard" | "feedback"
        self.versions: dict[str, int] = {}  # parameter name -> counter bumped at every mask change
        self._grad = {}  # parameter name -> (weakref to the hooked Parameter, RemovableHandle)

    def __deepcopy__(self, memo):
        return _MaskHook(self.modes)

    def __getstate__(self):
        return {"modes": self.modes}

    def __setstate__(self, state):
        self.modes = state["modes"]
        self.versions = {}
        self._grad = {}

    def __call__(self, module: nn.Module, args):
        _MASKED.add(module)  # a deep copy registers itself on its first forward
        with torch.no_grad():
            for name, mode in self.modes.items():
                _sync(module, name, mode)
        self.hook_grads(module)

    def hook_grads(self, module: nn.Module) -> None:
        for name, mode in self.modes.items():
            param = getattr(module, name)
            held = self._grad.get(name)
            if mode != "hard" or not param.requires_grad:
                continue
            if held is not None and held[0]() is param:
                continue
            if held is not None:
                held[1].remove()
            self._grad[name] = (weakref.ref(param), param.register_hook(_GradMask(module, name)))

    def unhook_grads(self, names: Iterable[str] | None = None) -> None:
        for name in list(self._grad if names is None else names):
            held = self._grad.pop(name, None)
            if held is not None:
                held[1].remove()


class _StateDictHook:
    def __call__(self, module, prefix, keep_vars):
        hook = _find_hook(module)
        if hook is not None:
            with torch.no_grad():
                for name, mode in hook.modes.items():
                    _sync(module, name, mode)


class _LoadHook:
    """After ``load_state_dict``: loaded values are dense values; mask them (feedback: keep the pruned ones)."""

    def __call__(self, module, incompatible_keys):
        hook = _find_hook(module)
        if hook is None:
            return
        with torch.no_grad():
            for name, mode in hook.modes.items():
                if mode == "feedback":
                    getattr(module, DORMANT_PREFIX + name).zero_()
                _sync(module, name, mode)


_CLEANED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # optimizer -> {(id(param), mask version)}


@torch.no_grad()
def _after_optimizer_step(optimizer, args, kwargs) -> None:
    """Global step post-hook: re-mask the stepped parameters; clear hard-masked entries of their state.

    In hard mode, once an optimizer's state has been cleared for the current mask, masked gradients keep
    the pruned weights at exactly zero (SGD, Adam, AdamW, RMSprop...), so later steps skip the work.
    """
    if not _MASKED:
        return
    stepped = None
    cleaned = _CLEANED.setdefault(optimizer, set())
    for module in list(_MASKED):
        hook = _find_hook(module)
        if hook is None:
            continue
        for name, mode in hook.modes.items():
            param = getattr(module, name)
            key = (id(param), hook.versions.get(name, 0))
            if mode == "hard" and key in cleaned:
                continue
            if stepped is None:
                stepped = {id(p) for g in optimizer.param_groups for p in g["params"]}
            if id(param) not in stepped:
                continue
            _sync(module, name, mode)
            if mode == "hard":
                mask = getattr(module, MASK_PREFIX + name)
                for value in optimizer.state.get(param, {}).values():
                    if isinstance(value, torch.Tensor) and value.shape == param.shape:
                        value.mul_(mask)
                if optimizer.state.get(param):
                    cleaned.add(key)


def _ensure_step_hook() -> None:
    global _STEP_HOOK
    if _STEP_HOOK is None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        _STEP_HOOK = register_optimizer_step_post_hook(_after_optimizer_step)


def _find_hook(module: nn.Module) -> _MaskHook | None:
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, _MaskHook):
            return hook
    return None


def _drop_hooks(module: nn.Module) -> None:
    for hooks, kind in ((module._forward_pre_hooks, _MaskHook), (module._state_dict_pre_hooks, _StateDictHook),
                        (module._load_state_dict_post_hooks, _LoadHook)):
        for key in [k for k, h in hooks.items() if isinstance(h, kind)]:
            if isinstance(hooks[key], _MaskHook):
                hooks[key].unhook_grads()
            del hooks[key]


def _resolve(model: nn.Module, fqn: str) -> tuple[nn.Module, str, nn.Parameter]:
    module_name, name = _split(fqn)
    try:
        module = model.get_submodule(module_name) if module_name else model
    except AttributeError:
        module = None
    param = module._parameters.get(name) if module is not None else None
    if param is None:
        known = [n for n, _ in model.named_parameters()]

        raise ConfigError(unknown_name_message("parameter", fqn, known, "masks") +
                          ". Masks are keyed by parameter FQN, e.g. 'fc1.weight'.")
    return module, name, param


# ---------------------------------------------------------------------------------------------- public


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The installed masks, ``{param_fqn: bool tensor}`` (fresh tensors; change masks with update_masks_).

    Example:
        >>> import torch, prunekit as pk
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 2))
        >>> _ = pk.masks.install_masks_(m, {"0.weight": torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1]]).bool()})
        >>> int(pk.masks.get_masks(m)["0.weight"].sum())
        4
    """
    out = {}
    for module_name, module in model.named_modules():
        hook = _find_hook(module)
        if hook is None:
            continue
        for name in hook.modes:
            out[f"{module_name}.{name}" if module_name else name] = getattr(module, MASK_PREFIX + name) != 0
    return out


def mask_modes(model: nn.Module) -> dict[str, str]:
    """``{param_fqn: "hard" | "feedback"}`` for every masked parameter."""
    out = {}
    for module_name, module in model.named_modules():
        hook = _find_hook(module)
        if hook is not None:
            for name, mode in hook.modes.items():
                out[f"{module_name}.{name}" if module_name else name] = mode
    return out


def dense_weight(model: nn.Module, fqn: str) -> torch.Tensor:
    """The dense value of a parameter: itself, plus the kept-aside pruned values in feedback mode."""
    module, name, param = _resolve(model, fqn)
    dormant = module._buffers.get(DORMANT_PREFIX + name)
    return param.detach() + dormant if dormant is not None else param.detach().clone()


def is_masked(model: nn.Module) -> bool:
    return any(_find_hook(m) is not None for m in model.modules())


def _snapshot(model: nn.Module, fqns: Iterable[str]):
    state = {}
    for fqn in fqns:
        module, name, param = _resolve(model, fqn)
        hook = _find_hook(module)
        entry = {"data": param.data.clone(), "mode": hook.modes.get(name) if hook else None}
        if entry["mode"] is not None:
            entry["mask"] = getattr(module, MASK_PREFIX + name).clone()
            if entry["mode"] == "feedback":
                entry["dormant"] = getattr(module, DORMANT_PREFIX + name).clone()
        state[fqn] = entry
    return state


def _restore(model: nn.Module, state) -> None:
    for fqn, entry in state.items():
        module, name, param = _resolve(model, fqn)
        _uninstall_one(module, name)
        with torch.no_grad():
            param.data.copy_(entry["data"])
        if entry["mode"] is not None:
            _install_one(module, name, entry["mask"], entry["mode"], apply=False)
            if entry["mode"] == "feedback":
                getattr(module, DORMANT_PREFIX + name).copy_(entry["dormant"])


@contextlib.contextmanager
def transaction(model: nn.Module, fqns: Iterable[str], op: str):
    """Restore the named parameters and their masks exactly if the body raises (re-raised as PruneError)."""
    state = _snapshot(model, list(fqns))
    try:
        yield
    except Exception as exc:  # restore, then report
        _restore(model, state)
        if isinstance(exc, (ConfigError, PruneError)):
            raise
        raise PruneError(f"{op} failed and the model was restored: {exc}", op=op) from exc


_VERSION = [0]


def _next_version() -> int:
    _VERSION[0] += 1
    return _VERSION[0]


def _install_one(module: nn.Module, name: str, mask: torch.Tensor, mode: str, apply: bool = True) -> None:
    param = getattr(module, name)
    # stored in the parameter's dtype: the hooks multiply by it without a conversion on every call
    mask = (mask != 0).to(device=param.device, dtype=param.dtype)
    hook = _find_hook(module)
    old_mode = hook.modes.get(name) if hook is not None else None
    _ensure_step_hook()
    _MASKED.add(module)
    if hook is None:
        hook = _MaskHook({})
        module.register_forward_pre_hook(hook)
        module.register_state_dict_pre_hook(_StateDictHook())
        module.register_load_state_dict_post_hook(_LoadHook())
    with torch.no_grad():
        if old_mode == "feedback":  # fold the dormant values back before changing the mask
            full = param.data + getattr(module, DORMANT_PREFIX + name)
            param.data.copy_(full)
        if mode == "feedback":
            dormant = torch.zeros_like(param.data)
            module.register_buffer(DORMANT_PREFIX + name, dormant, persistent=False)
        elif DORMANT_PREFIX + name in module._buffers:
            del module._buffers[DORMANT_PREFIX + name]
        module.register_buffer(MASK_PREFIX + name, mask, persistent=False)
        hook.modes[name] = mode
        hook.versions[name] = _next_version()
        if old_mode is not None and old_mode != mode:
            hook.unhook_grads([name])
        if apply:
            _sync(module, name, mode)
    hook.hook_grads(module)


def _uninstall_one(module: nn.Module, name: str) -> None:
    hook = _find_hook(module)
    if hook is None or name not in hook.modes:
        return
    hook.unhook_grads([name])
    del hook.modes[name]
    module._buffers.pop(MASK_PREFIX + name, None)
    module._buffers.pop(DORMANT_PREFIX + name, None)
    if not hook.modes:
        _drop_hooks(module)


def _check_mask(fqn: str, param: torch.Tensor, mask) -> str | None:
    if not isinstance(mask, torch.Tensor):
        return f"masks[{fqn!r}] is a {type(mask).__name__}, expected a tensor shaped {tuple(param.shape)}"
    if tuple(mask.shape) != tuple(param.shape):
        return f"masks[{fqn!r}] has shape {tuple(mask.shape)} but the parameter has shape {tuple(param.shape)}"
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        return f"masks[{fqn!r}] holds values other than 0 and 1; pass a bool tensor"
    return None


def install_masks_(model: nn.Module, masks: dict[str, torch.Tensor], *, mode: str = "hard") -> dict[str, str]:
    """Install or replace masks, ``{param_fqn: 0/1 or bool tensor}``; returns ``{param_fqn: mode}``.

    ``mode="hard"``: pruned weights are zero and get zero gradients. ``mode="feedback"``: the forward uses
    ``W * mask`` but every weight is updated and pruned values are kept, so changing the mask later brings
    weights back with their own values (Dynamic Network Surgery, DPF). All masks are validated before any
    is installed; on failure the model is unchanged.

    Example:
        >>> import torch, prunekit as pk
        >>> m = torch.nn.Linear(2, 1)
        >>> _ = pk.masks.install_masks_(m, {"weight": torch.tensor([[True, False]])})
        >>> m.weight[0, 1].item() == 0
        True
    """
    if mode not in MODES:
        raise ConfigError(unknown_name_message("mask mode", mode, MODES, "mode"))
    if not isinstance(masks, dict):
        raise ConfigError(f"masks must be a dict {{param_fqn: tensor}}, got {type(masks).__name__}")
    problems = []
    for fqn, mask in masks.items():
        try:
            _, _, param = _resolve(model, fqn)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        problem = _check_mask(fqn, param, mask)
        if problem:
            problems.append(problem)
    if problems:
        raise ConfigError("; ".join(problems) + ". Fix the masks; the model was not changed.")
    with transaction(model, masks, "install_masks_"):
        for fqn, mask in masks.items():
            module, name, _ = _resolve(model, fqn)
            _install_one(module, name, mask, mode)
    return {fqn: mode for fqn in masks}


def update_masks_(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, str]:
    """Replace existing masks, keeping each parameter's mode (feedback mode revives with the kept values)."""
    modes = mask_modes(model)
    missing = [fqn for fqn in masks if fqn not in modes]
    if missing:
        raise ConfigError(f"update_masks_: {missing} have no mask; install them with install_masks_ or "
                          f"sparsify_ first (masked: {sorted(modes)})")
    out = {}
    for mode in MODES:
        part = {fqn: m for fqn, m in masks.items() if modes[fqn] == mode}
        if part:
            out.update(install_masks_(model, part, mode=mode))
    return out


def apply_masks_(model: nn.Module) -> int:
    """Re-apply every mask to its parameter now (the hooks do this before each forward); returns the count."""
    n = 0
    with torch.no_grad():
        for module in model.modules():
            hook = _find_hook(module)
            if hook is not None:
                for name, mode in hook.modes.items():
                    _sync(module, name, mode)
                    n += 1
    return n


def remove_masks_(model: nn.Module, fqns: Iterable[str] | None = None, *, apply: bool = True) -> list[str]:
    """Remove masks (all, or those named) and their hooks; with ``apply`` the weights keep their zeros."""
    removed = []
    targets = set(get_masks(model) if fqns is None else fqns)
    for module_name, module in model.named_modules():
        hook = _find_hook(module)
        if hook is None:
            continue
        for name in list(hook.modes):
            fqn = f"{module_name}.{name}" if module_name else name
            if fqn not in targets:
                continue
            if apply:
                with torch.no_grad():
                    _sync(module, name, hook.modes[name])
            elif hook.modes[name] == "feedback":
                with torch.no_grad():
                    getattr(module, name).data.add_(getattr(module, DORMANT_PREFIX + name))
            _uninstall_one(module, name)
            removed.append(fqn)
    return removed


def masks_from_zeros_(model: nn.Module, fqns: Iterable[str], *, mode: str = "hard") -> dict[str, str]:
    """Re-derive masks from the zeros of the named parameters (e.g. after loading a finalized checkpoint)."""
    masks = {}
    for fqn in fqns:
        _, _, param = _resolve(model, fqn)
        masks[fqn] = param.detach() != 0
    return install_masks_(model, masks, mode=mode)


def mask_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{param_fqn: uint8 mask}`` on CPU, ready for safetensors (mode is kept in :func:`save_masks`)."""
    return {fqn: m.detach().to("cpu", torch.uint8).contiguous() for fqn, m in get_masks(model).items()}


def save_masks(model: nn.Module, path: str | os.PathLike) -> str:
    """Write the masks to a safetensors file (the ``prunekit_masks`` sidecar); returns the path."""
    from safetensors.torch import save_file

    modes = mask_modes(model)
    save_file(mask_state_dict(model), str(path), metadata={"format": "prunekit_masks", "version": "1",
                                                          **{f"mode:{k}": v for k, v in modes.items()}})
    return str(path)


def load_masks_(model: nn.Module, path: str | os.PathLike) -> dict[str, str]:
    """Install the masks saved by :func:`save_masks` (same modes); the model is unchanged on failure."""
    from safetensors import safe_open

    if not os.path.exists(path):
        raise CheckpointError(f"load_masks_: no mask file at path={str(path)!r}; write one with save_masks(model, path)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # corrupted or not safetensors
        raise CheckpointError(f"load_masks_: cannot read path={str(path)!r} as a safetensors mask file: {exc}") from exc
    if meta.get("format") != "prunekit_masks":
        raise CheckpointError(f"load_masks_: path={str(path)!r} is not a prunekit_masks file (format="
                              f"{meta.get('format')!r}); write one with save_masks(model, path)")
    out = {}
    for mode in MODES:
        part = {k: v.bool() for k, v in tensors.items() if meta.get(f"mode:{k}", "hard") == mode}
        if part:
            out.update(install_masks_(model, part, mode=mode))
    return out
