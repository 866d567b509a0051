"""Peer tools run through the same protocol: Torch-Pruning 1.6 importances and torch.nn.utils.prune.

Only the benchmark imports ``torch_pruning`` (a development dependency). Each peer prunes the model in
place through its own public API; for a MACs/params target, the pruning ratio is found by bisection so
the peer lands on the same budget as prunekit, counted by the same counter (``prunekit.measure``).
"""
from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from ..errors import ConfigError
from ..recipe import parse_target

log = logging.getLogger(__name__)

TP_PREFIX = "tp:"
TORCH_PRUNE_PREFIX = "torch-prune:"


def _tp_importance(name: str):
    import torch_pruning as tp

    imp = tp.importance
    table = {
        # Li et al.'s filter norms: the producing layer's weights only ("first" member of the group)
        "l1": lambda: imp.MagnitudeImportance(p=1, group_reduction="first", normalizer=None),
        "l2": lambda: imp.MagnitudeImportance(p=2, group_reduction="first", normalizer=None),
        "random": lambda: imp.RandomImportance(),
        # Torch-Pruning's defaults (mean over the coupled group, mean-normalised)
        "group-norm": lambda: imp.GroupMagnitudeImportance(p=2),
        "taylor": lambda: imp.GroupTaylorImportance(),
        "fpgm": lambda: imp.FPGMImportance(),
        "bn-scale": lambda: imp.BNScaleImportance(),
        "lamp": lambda: imp.LAMPImportance(),
    }
    if name not in table:
        from .._registry import unknown_name_message

        raise ConfigError(unknown_name_message("Torch-Pruning importance", name, table, "method tp:"))
    return table[name]()


TP_IMPORTANCES = ("l1", "l2", "random", "group-norm", "taylor", "fpgm", "bn-scale", "lamp")
TORCH_PRUNE_METHODS = ("global-magnitude",)


def is_peer(method: str) -> bool:
    return method.startswith(TP_PREFIX) or method.startswith(TORCH_PRUNE_PREFIX)


def peer_source(method: str) -> str:
    return "torch-pruning" if method.startswith(TP_PREFIX) else "torch.nn.utils.prune"


def check_peer(method: str, target: str) -> None:
    kind, _ = parse_target(target)
    if method.startswith(TP_PREFIX):
        name = method[len(TP_PREFIX):]
        if name not in TP_IMPORTANCES:
            from .._registry import unknown_name_message

            raise ConfigError(unknown_name_message("Torch-Pruning importance", name, TP_IMPORTANCES, "method"))
        if kind == "sparsity":
            raise ConfigError(f"method={method!r} removes channels; give a macs= or params= target, not {target!r}")
    else:
        name = method[len(TORCH_PRUNE_PREFIX):]
        if name not in TORCH_PRUNE_METHODS:
            from .._registry import unknown_name_message

            raise ConfigError(unknown_name_message("torch.nn.utils.prune method", name, TORCH_PRUNE_METHODS,
                                                   "method"))
        if kind != "sparsity":
            raise ConfigError(f"method={method!r} masks single weights; give a sparsity= target, not {target!r}")


def _classifier_layers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]


def _accumulate_grads(model: nn.Module, calib) -> None:
    """Sum the loss gradients of ``calib`` into ``.grad`` (what gradient-based importances read)."""
    model.zero_grad()
    was_training = model.training
    model.eval()
    for xb, yb in calib:
        nn.functional.cross_entropy(model(xb), yb).backward()
    model.train(was_training)


def _tp_prune_once(model, x, importance, ratio, ignored):
    import torch_pruning as tp

    pruner = tp.pruner.MetaPruner(model, x, importance=importance, pruning_ratio=ratio, ignored_layers=ignored)
    pruner.step()
    return model


def tp_prune_(model: nn.Module, x: torch.Tensor, method: str, target: str, *, calib, num_classes: int,
              ignore: tuple[str, ...] = (), seed: int = 0, tol: float = 0.01, steps: int = 14) -> dict:
    """Prune ``model`` in place with Torch-Pruning to the MACs/params fraction of ``target``.

    The uniform per-layer ratio is bisected on copies of the model until the kept fraction is within
    ``tol`` *below* the target (never above it); returns ``{"ratio", "kept"}``. ``seed`` seeds the
    random importance (the same draw in every bisection trial and in the final cut).
    """
    from ..measure import count_macs, count_params

    kind, value = parse_target(target)
    check_peer(method, target)
    name = method[len(TP_PREFIX):]

    def cost(m):
        return float(count_macs(m, x).total if kind == "macs" else count_params(m))

    base = cost(model)
    needs_grads = name == "taylor"
    if needs_grads:  # gradients once on the unpruned model; each trial copy gets them
        _accumulate_grads(model, calib)

    def trial(ratio):
        trial_model = copy.deepcopy(model)
        if needs_grads:
            for src, dst in zip(model.parameters(), trial_model.parameters()):
                dst.grad = None if src.grad is None else src.grad.clone()
        ignored = _classifier_layers(trial_model, num_classes) + [trial_model.get_submodule(f) for f in ignore]
        torch.manual_seed(seed)
        _tp_prune_once(trial_model, x, _tp_importance(name), ratio, ignored)
        return trial_model, cost(trial_model) / base

    lo, hi, best, kept = 0.0, 0.95, None, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        _, kept = trial(mid)
        if kept <= value:
            best, hi = (mid, kept), mid
            if value - kept <= tol:
                break
        else:
            lo = mid
    if best is None:
        raise ConfigError(f"Torch-Pruning could not reach target={target!r} with {method!r} (kept {kept:.3f} at "
                          f"ratio 0.95); choose a larger target")
    ratio = best[0]
    ignored = _classifier_layers(model, num_classes) + [model.get_submodule(f) for f in ignore]
    torch.manual_seed(seed)
    _tp_prune_once(model, x, _tp_importance(name), ratio, ignored)
    model.zero_grad(set_to_none=True)
    kept = cost(model) / base
    log.info("%s: ratio %.4f keeps %.4f of %s", method, ratio, kept, kind)
    return {"ratio": ratio, "kept": kept}


def torch_prune_(model: nn.Module, method: str, target: str) -> list[tuple[nn.Module, str]]:
    """Global magnitude masks with ``torch.nn.utils.prune``; returns the masked (module, name) pairs.

    The masks stay attached (``weight_orig`` + ``weight_mask``) so fine-tuning keeps pruned weights at
    zero; call :func:`torch_prune_finalize` after training.
    """
    from torch.nn.utils import prune

    kind, value = parse_target(target)
    check_peer(method, target)
    params = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Conv1d))]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=value)
    return params


def torch_prune_finalize(params) -> None:
    from torch.nn.utils import prune

    for module, name in params:
        prune.remove(module, name)
