"""Whole decoder layers of a language model: find the stack, and remove layers from it for real.

:func:`decoder_layers` finds the ``nn.ModuleList`` of a transformer's repeated blocks (``model.blocks`` of
gpt-tiny, ``model.model.layers`` of a Hugging Face decoder): the longest module list whose entries are all of
one class and each hold an attention module. :func:`remove_layers_` deletes entries from it; for a Hugging Face
model the config follows (``num_hidden_layers``, a per-layer ``layer_types`` list) and every remaining
attention's ``layer_idx`` is renumbered, so generation caches index the right slots and ``save_pretrained`` /
``from_pretrained`` rebuild the same model.
"""
from __future__ import annotations

import logging

from torch import nn

from ..errors import ConfigError
from .hf_config import DEPTH_FIELDS, is_hf_model

__all__ = ["decoder_layers", "remove_layers_", "layer_prefix"]

log = logging.getLogger(__name__)


def _has_attention(mod: nn.Module) -> bool:
    return any(type(m).__name__.endswith(("Attention", "SelfAttention")) or isinstance(m, nn.MultiheadAttention)
               for m in mod.modules())


def decoder_layers(model: nn.Module, *, method: str = "this method") -> tuple[str, nn.ModuleList]:
    """``(fqn, module list)`` of the model's decoder layers; ``ConfigError`` when there is none.

    Example:
        >>> import prunekit as pk
        >>> m = pk.models.create("gpt-tiny", num_classes=32, in_channels=1, input_size=8)
        >>> name, layers = decoder_layers(m)
        >>> name, len(layers)
        ('blocks', 2)
    """
    best = None
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        kinds = {type(m) for m in mod}
        if len(kinds) != 1 or not all(_has_attention(m) for m in mod):
            continue
        if best is None or len(mod) > len(best[1]):
            best = (name, mod)
    if best is None:
        raise ConfigError(f"model={type(model).__name__}: {method} prunes a language model's decoder layers, but "
                          f"this model has no list of transformer blocks (an nn.ModuleList of layers that each "
                          f"hold an attention module); use a decoder such as gpt-tiny or hf:llama-tiny")
    return best


def layer_prefix(stack_fqn: str, i: int) -> str:
    """The FQN prefix of layer ``i`` of the stack named ``stack_fqn`` (``"blocks.1."``)."""
    return f"{stack_fqn}.{i}." if stack_fqn else f"{i}."


def remove_layers_(model: nn.Module, indices) -> dict:
    """Delete the layers ``indices`` of the decoder stack in place; returns what changed.

    Errors (the model untouched): an index outside the stack, or removing every layer. The returned dict
    holds ``removed`` (sorted indices), ``layers_before``/``layers_after`` and ``config_changes``
    (``{field: [old, new]}``) for a Hugging Face model.

    Example:
        >>> import prunekit as pk
        >>> m = pk.models.create("gpt-tiny", num_classes=32, in_channels=1, input_size=8, n_layer=3)
        >>> remove_layers_(m, [1])["layers_after"], len(m.blocks)
        (2, 2)
    """
    stack_fqn, stack = decoder_layers(model, method="remove_layers_")
    n = len(stack)
    try:
        idx = sorted({int(i) for i in indices})
    except (TypeError, ValueError):
        raise ConfigError(f"indices={indices!r} must be layer numbers (ints) of the {n}-layer stack "
                          f"{stack_fqn!r}") from None
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        raise ConfigError(f"indices={list(indices)!r}: layer {bad[0]} is outside the {n}-layer stack {stack_fqn!r}; "
                          f"give numbers in [0, {n})")
    if len(idx) >= n:
        raise ConfigError(f"indices={list(indices)!r} would remove all {n} layers of {stack_fqn!r}; keep at least one")
    keep = [m for i, m in enumerate(stack) if i not in set(idx)]
    changes: dict = {}
    if is_hf_model(model):
        cfg = model.config
        for f in DEPTH_FIELDS:
            v = getattr(cfg, f, None)
            if isinstance(v, int) and not isinstance(v, bool) and v == n:
                changes[f] = [v, len(keep)]
        types = getattr(cfg, "layer_types", None)
        if isinstance(types, (list, tuple)) and len(types) == n:
            changes["layer_types"] = [list(types), [t for i, t in enumerate(types) if i not in set(idx)]]
        if not any(f in changes for f in DEPTH_FIELDS):
            raise ConfigError(f"model={type(model).__name__}: its config has no layer count equal to the {n} layers "
                              f"of {stack_fqn!r} (looked for {', '.join(DEPTH_FIELDS)}); removing layers would "
                              f"leave a config that rebuilds another model")
    stack_parent, _, attr = stack_fqn.rpartition(".")
    parent = model.get_submodule(stack_parent) if stack_parent else model
    new_stack = nn.ModuleList(keep)
    setattr(parent, attr, new_stack)
    for new_i, layer in enumerate(new_stack):
        for mod in layer.modules():
            if isinstance(mod.__dict__.get("layer_idx"), int):
                mod.layer_idx = new_i
    for f, (_, new) in changes.items():
        setattr(model.config, f, new)
    log.info("removed layers %s of %s (%d -> %d)", idx, stack_fqn, n, len(keep))
    return {"stack": stack_fqn, "removed": idx, "layers_before": n, "layers_after": len(keep),
            "config_changes": changes}
