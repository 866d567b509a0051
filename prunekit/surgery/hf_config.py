"""Keep a Hugging Face model's ``config`` true to its pruned shapes, so ``save_pretrained`` round-trips.

After surgery the modules have new widths, but ``model.config`` still describes the dense model, and
``from_pretrained`` would rebuild the old shapes and refuse the checkpoint. :func:`sync_config_` searches
new values for the config's integer fields (``hidden_size``, ``intermediate_size``, ``num_attention_heads``,
``num_key_value_heads``, ``head_dim``, ...) such that the model class built from the new config on the meta
device has exactly the pruned model's tensor shapes and the same head-layout attributes on its modules
(``head_dim``, ``num_heads``, ...); several configs can give equal shapes (4 heads of 8 or 2 heads of 16),
and only the one matching the modules computes the same function. Candidates come from module attributes
of the same name and from the ratios by which pruned dims shrank; a greedy search keeps the change that
removes most mismatches until none is left. Non-uniform widths (one layer pruned more than another) have
no config; the config is then left as it was and the caller is told why.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import sys

import torch
from torch import nn

log = logging.getLogger(__name__)

# module attributes that fix the head layout; compared between the pruned model and a rebuilt one. Width
# attributes a forward never reads (a decoder layer's ``hidden_size``) can be stale after surgery and ratios
# such as ``num_key_value_groups`` can legitimately differ (one kv head broadcasts), so they are not compared.
LAYOUT_ATTRS = ("head_dim", "head_size", "attention_head_size", "num_heads", "num_attention_heads",
                "num_key_value_heads", "n_head", "n_heads")
MAX_BUILDS = 400
LAYOUT_WEIGHT = 10


def is_hf_model(model: nn.Module) -> bool:
    tf = sys.modules.get("transformers")  # never import transformers just to ask
    return tf is not None and isinstance(getattr(model, "config", None), tf.PretrainedConfig) and \
        isinstance(model, tf.PreTrainedModel)


def _layout(model: nn.Module) -> dict:
    out = {}
    for name, mod in model.named_modules():
        for a in LAYOUT_ATTRS:
            v = mod.__dict__.get(a)
            if isinstance(v, int) and not isinstance(v, bool):
                out[(name, a)] = v
    return out


def _build(model: nn.Module, config):
    """``type(model)(config)`` on the meta device, without running weight initialisers (nothing to fill)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: initialisers run, on meta tensors (slower, same shapes)
        no_init_weights = contextlib.nullcontext
    with torch.device("meta"), no_init_weights():
        return type(model)(config)


def _shapes(model: nn.Module) -> dict:
    """The shapes of ``model.state_dict()``'s entries, read without building it (no detach per tensor)."""
    out = {}
    for mname, mod in model.named_modules(remove_duplicate=False):
        pre = f"{mname}." if mname else ""
        for n, p in mod._parameters.items():
            if p is not None:
                out[pre + n] = tuple(p.shape)
        for n, b in mod._buffers.items():
            if b is not None and n not in mod._non_persistent_buffers_set:
                out[pre + n] = tuple(b.shape)
    return out


DEPTH_FIELDS = ("num_hidden_layers", "n_layer", "num_layers", "num_decoder_layers", "encoder_layers",
                "decoder_layers")


def _shallow(config):
    """``config`` with one layer per stack (the search builds it; the full config is checked at the end)."""
    c = copy.deepcopy(config)
    for f in DEPTH_FIELDS:
        v = getattr(c, f, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 1:
            setattr(c, f, 1)
    return c


def sync_config_(model: nn.Module) -> dict:
    """Update ``model.config`` to the pruned widths; returns ``{field: [old, new]}`` ({} when nothing changed).

    The search builds one-layer models (fast even for billion-parameter configs) and compares the tensors
    they have; the chosen config is then checked on the full depth. Raises :class:`ValueError` (config
    untouched) when no config reproduces every pruned shape and the head layout."""
    cfg = model.config
    want_shapes, want_layout = _shapes(model), _layout(model)

    def score(c, full: bool = False, built: nn.Module | None = None) -> int | None:
        try:
            m = built if built is not None else _build(model, c if full else _shallow(c))
        except Exception as e:  # noqa: BLE001 - an impossible combination of fields
            log.debug("config candidate rejected: %s", e)
            return None
        shapes, layout = _shapes(m), _layout(m)
        keys = set(want_shapes) | set(shapes) if full else set(shapes)
        bad = sum(1 for k in keys if want_shapes.get(k) != shapes.get(k))
        # a layout attribute that disagrees means another function: it outweighs the few tensors per layer
        # one field can fix (so 4 heads of 8 never replace 2 of 16), yet a step through it stays possible
        bad += LAYOUT_WEIGHT * sum(1 for k, v in layout.items() if k in want_layout and want_layout[k] != v)
        return bad

    try:
        base = _build(model, _shallow(cfg))  # one layer per stack: what every candidate is compared on
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"the model class cannot be rebuilt from its own config on the meta device: {e}") from e
    best = score(cfg, built=base)
    if best == 0 and score(cfg, full=True) == 0:  # (a shallow mismatch is a full one: no full build then)
        return {}
    fields = {k: v for k, v in cfg.to_dict().items() if isinstance(v, int) and not isinstance(v, bool) and v > 0
              and k not in DEPTH_FIELDS}
    base_shapes = _shapes(base)
    ratios = set()
    for k, s in base_shapes.items():
        for old, new in zip(s, want_shapes.get(k, ())):
            if old != new and old:
                ratios.add((old, new))
    # a field equal to a size that only unchanged tensors have (vocab_size, max_position_embeddings) sizes
    # those tensors: scaling it by a width ratio would only cost builds
    olds = {old for old, _ in ratios}
    fixed = {n for k, s in base_shapes.items() if want_shapes.get(k) == s for n in s} - olds
    attr_values: dict[str, set] = {}
    for (_, a), v in want_layout.items():
        attr_values.setdefault(a, set()).add(v)
    cands: dict[str, list] = {}
    for f, v in fields.items():
        cs = [x for x in sorted(attr_values.get(f, ())) if x != v]
        for old, new in sorted(ratios):
            if old == v:
                cs.append(new)
            elif (v * new) % old == 0 and v not in fixed:
                cs.append(v * new // old)
        cs = [c for c in dict.fromkeys(cs) if c != v and c > 0]
        if cs:
            cands[f] = cs
    current = copy.deepcopy(cfg)
    changes: dict = {}
    builds = 0
    while best and builds < MAX_BUILDS:
        per_field: dict = {}  # the best improving value of each field in this round
        for f, cs in cands.items():
            for c in cs:
                if getattr(current, f, None) == c:
                    continue
                t = copy.deepcopy(current)
                setattr(t, f, c)
                builds += 1
                s = score(t)
                if s is not None and s < best and (f not in per_field or s < per_field[f][0]):
                    per_field[f] = (s, c)
        if not per_field:
            break
        f, (best, c) = min(per_field.items(), key=lambda kv: kv[1][0])  # the best single change
        step = {f: c}
        if len(per_field) > 1:  # most pruned models change several fields at once: try them all together
            t = copy.deepcopy(current)
            for f, (_, c) in per_field.items():
                setattr(t, f, c)
            builds += 1
            s = score(t)
            if s is not None and s < best:
                best, step = s, {f: c for f, (_, c) in per_field.items()}
        for f, c in step.items():
            changes[f] = [fields[f], c]
            setattr(current, f, c)
    full = score(current, full=True) if not best else best
    if best or full:
        raise ValueError("no config reproduces the pruned shapes and head layout (a mismatch score of "
                         f"{best or full} remains); layers of one kind were probably pruned to different widths")
    for f, (_, new) in changes.items():
        setattr(cfg, f, new)
    return changes
