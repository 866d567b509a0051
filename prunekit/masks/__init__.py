"""Masks: unstructured, N:M, block, row and column sparsity kept through training, saving and DDP.

The API (all in place, all returning a report or a dict, never ``None``; the report is
:class:`prunekit.api.Report`, the type ``prune_`` returns too)::

    report = pk.sparsify_(model, sparsity=0.9, criterion="magnitude", pattern="element",
                          allocation="uniform", calib=None, ignore=(), per_layer=None,
                          exempt=(), mode="hard", nested=True, seed=0, scores=None)   # -> Report
    pk.finalize_(model)          # masks made permanent; a plain model with the dense state_dict keys

    masks.get_masks(model)                   # {param_fqn: bool mask} (copies)
    masks.install_masks_(model, {fqn: mask}, mode="hard" | "feedback")
    masks.update_masks_(model, {fqn: mask})  # keep each parameter's mode
    masks.apply_masks_(model)                # re-apply now (hooks do it before each forward)
    masks.remove_masks_(model, fqns=None, apply=True)
    masks.save_masks(model, path) / masks.load_masks_(model, path)   # safetensors sidecar "prunekit_masks"
    masks.masks_from_zeros_(model, fqns)     # re-derive masks from a finalized checkpoint's zeros
    masks.mask_report(model)                 # counts per masked parameter
    masks.dense_weight(model, fqn)           # param + kept pruned values (feedback mode)

Extension points: ``register_weight_criterion(name, needs_calib=)`` (``fn(model, params, *, calib,
loss_fn, generator) -> {fqn: scores}``, higher = kept), ``register_pattern(family)`` (a factory returning
a :class:`~prunekit.masks.patterns.Pattern`), ``select_masks(scores, pattern, sparsities)`` for methods
that compute their own scores, and ``prunable_weights(model, ignore, exempt)``.

Mechanism (why, in ``docs/masks.md``): a mask is a non-persistent 0/1 buffer ``_pk_mask_<name>`` on the
parameter's module; a forward pre-hook re-applies it before every forward, a gradient hook zeroes pruned
gradients (``mode="hard"``), and state-dict hooks keep checkpoints masked. Parameter names never change.
In ``mode="feedback"`` the forward sees ``W * mask`` while every weight keeps learning (DNS, DPF).
Dense conversion for inference: :mod:`prunekit.masks.sparse`.

Example:
    >>> import torch, prunekit as pk
    >>> model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    >>> pk.sparsify_(model, sparsity=0.75, allocation="global").pruned
    240
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    >>> for _ in range(3):
    ...     opt.zero_grad(); model(torch.randn(8, 16)).sum().backward(); opt.step()
    >>> int((model[0].weight == 0).sum() + (model[2].weight == 0).sum())
    240
    >>> sorted(pk.finalize_(model).layers)
    ['0.weight', '2.weight']
"""
from __future__ import annotations

from ._engine import (MODES, apply_masks_, dense_weight, get_masks, install_masks_, is_masked, load_masks_, mask_modes,
                      mask_state_dict, masks_from_zeros_, remove_masks_, save_masks, update_masks_)
from .criteria import WEIGHT_CRITERIA, connection_sensitivity, get_weight_criterion, register_weight_criterion
from .patterns import PATTERNS, Pattern, get_pattern, register_pattern, view2d
from .sparsify import (ALLOCATIONS, MaskReport, erk_densities, finalize_, mask_report, prunable_weights,
                       select_masks, sparsify_)
from .tasks import PackedNetwork, load_packed_network, save_packed_network

__all__ = ["ALLOCATIONS", "MODES", "MaskReport", "PATTERNS", "PackedNetwork", "Pattern", "WEIGHT_CRITERIA", "apply_masks_",
           "connection_sensitivity", "dense_weight", "erk_densities", "finalize_", "get_masks", "get_pattern",
           "get_weight_criterion", "install_masks_", "is_masked", "load_masks_", "load_packed_network", "mask_modes", "mask_report",
           "mask_state_dict", "masks_from_zeros_", "prunable_weights", "register_pattern",
           "register_weight_criterion", "remove_masks_", "save_masks", "save_packed_network", "select_masks", "sparsify_",
           "update_masks_", "view2d"]
