"""Peer tools run through the same protocol: Torch-Pruning 1.6 importances and torch.nn.utils.prune.

Only the benchmark imports ``torch_pruning`` (a development dependency). Each peer prunes the model in
place through its own public API; for a MACs/params target, the pruning ratio is searched (see
:func:`tp_prune_`) until the peer lands within 1% of the budget prunekit's rows reached, counted by the same
counter (``prunekit.measure``).
"""
from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from ..errors import ConfigError
from ..recipe import parse_target
from .._registry import unknown_name_message
from ..masks import prunable_weights
from ..measure import count_macs, count_params

log = logging.getLogger(__name__)

TP_PREFIX = "tp:"
_MAX_MEASURED_LAYERS = 200  # the ratio mix considers at most this many layers (model order)
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
            raise ConfigError(unknown_name_message("Torch-Pruning importance", name, TP_IMPORTANCES, "method"))
        if kind == "sparsity":
            raise ConfigError(f"method={method!r} removes channels; give a macs= or params= target, not {target!r}")
    else:
        name = method[len(TORCH_PRUNE_PREFIX):]
        if name not in TORCH_PRUNE_METHODS:
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


def _tp_prune_once(model, x, importance, ratio, ignored, ratio_dict=None):
    import torch_pruning as tp

    pruner = tp.pruner.MetaPruner(model, x, importance=importance, pruning_ratio=ratio, ignored_layers=ignored,
                                  pruning_ratio_dict=ratio_dict)
    pruner.step()
    return model


def _prunable_layers(model: nn.Module, num_classes: int, ignore: tuple[str, ...]) -> list[str]:
    """Names of the layers whose output channels Torch-Pruning may cut, in model order."""
    skip = {id(m) for m in _classifier_layers(model, num_classes)} | {id(model.get_submodule(f)) for f in ignore}
    return [n for n, m in model.named_modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and id(m) not in skip]


def tp_prune_(model: nn.Module, x: torch.Tensor, method: str, target: str, *, calib, num_classes: int,
              ignore: tuple[str, ...] = (), seed: int = 0, goal: float | None = None, tol: float = 0.01,
              steps: int = 18) -> dict:
    """Prune ``model`` in place with Torch-Pruning to within ``tol`` (relative) of a MACs/params fraction.

    ``goal`` is the kept fraction to match (default: the target's value; the benchmark passes the fraction
    prunekit's rows actually reached). Torch-Pruning's channel counts move in whole steps and one uniform
    ratio moves every layer of a width at once, so a uniform ratio alone can miss by 10% or more. The search:

    1. bisect the uniform ratio until the two closest ratios bracket ``goal`` (``r_keep`` keeps at least
       ``goal``, ``r_cut`` less);
    2. if neither lands within ``tol``, start from ``r_keep`` everywhere, measure what moving each prunable
       layer alone to ``r_cut`` costs (one channel step of that layer's group), then, largest step first, move
       a layer (Torch-Pruning's own ``pruning_ratio_dict``) whenever the measured result still keeps at least
       ``goal * (1 - tol)``, until within ``tol / 2`` of ``goal``; if that fails, the same from ``r_cut``
       everywhere towards ``r_keep``.

    The closest trial wins. Returns ``{"ratio", "kept", "goal", "layers_moved", "moved_to_ratio", "trials"}``;
    ``layers_moved`` is ``None`` when a uniform ratio sufficed. ``seed`` seeds the random importance
    (the same draw in every trial and in the final cut).
    """
    kind, value = parse_target(target)
    check_peer(method, target)
    name = method[len(TP_PREFIX):]
    goal = float(value if goal is None else goal)
    if not 0.0 < goal <= 1.0:
        raise ConfigError(f"goal={goal!r} must be a kept fraction in (0, 1], e.g. goal=0.25")

    def cost(m):
        return float(count_macs(m, x).total if kind == "macs" else count_params(m))

    base = cost(model)
    needs_grads = name == "taylor"
    if needs_grads:  # gradients once on the unpruned model; each trial copy gets them
        _accumulate_grads(model, calib)
    layers = _prunable_layers(model, num_classes, ignore)

    def prune(m, ratio, ratio_dict=None):
        ignored = _classifier_layers(m, num_classes) + [m.get_submodule(f) for f in ignore]
        rd = None if ratio_dict is None else {m.get_submodule(n): r for n, r in ratio_dict.items()}
        torch.manual_seed(seed)
        _tp_prune_once(m, x, _tp_importance(name), ratio, ignored, rd)

    trials = []

    def trial(ratio, ratio_dict=None):
        trial_model = copy.deepcopy(model)
        if needs_grads:
            for src, dst in zip(model.parameters(), trial_model.parameters()):
                dst.grad = None if src.grad is None else src.grad.clone()
        prune(trial_model, ratio, ratio_dict)
        kept = cost(trial_model) / base
        trials.append(kept)
        return kept

    def off(kept):
        return abs(kept / goal - 1.0)

    # 1. the uniform ratio: r_keep keeps >= goal, r_cut keeps < goal
    r_keep, kept_keep, r_cut, kept_cut = 0.0, 1.0, None, None
    lo, hi = 0.0, 0.95
    for _ in range(steps):
        mid = (lo + hi) / 2
        kept = trial(mid)
        if kept >= goal:
            r_keep, kept_keep, lo = mid, kept, mid
        else:
            r_cut, kept_cut, hi = mid, kept, mid
        if off(kept) <= tol / 4 or hi - lo < 1e-5:
            break
    if r_cut is None:
        kept_cut = trial(0.95)
        if kept_cut >= goal:
            raise ConfigError(f"Torch-Pruning could not reach target={target!r} with {method!r} (kept "
                              f"{kept_cut:.3f} at ratio 0.95); choose a larger target")
        r_cut = 0.95
    best = min([(off(kept_keep), r_keep, None, kept_keep), (off(kept_cut), r_cut, None, kept_cut)],
               key=lambda t: t[0])
    # 2. mixed per-layer ratios when a single ratio cannot land within tol
    if best[0] > tol and layers:
        # greedy, from each side: from r_keep everywhere move layers to r_cut (largest measured step first)
        # while the model keeps at least goal * (1 - tol); from r_cut everywhere move layers back to r_keep
        # while it keeps at most goal * (1 + tol). Every accepted move is a measured trial, not an estimate.
        for start, other, start_kept, sign in ((r_keep, r_cut, kept_keep, 1.0), (r_cut, r_keep, kept_cut, -1.0)):
            step = {n: sign * (start_kept - trial(start, {n: other})) for n in layers[:_MAX_MEASURED_LAYERS]}
            moved, current = (), start_kept
            for n in sorted(step, key=lambda n: -step[n]):
                if step[n] <= 0 or sign * (current - sign * step[n] - goal) < -goal * tol * 1.005:
                    continue
                kept = trial(start, {m: other for m in (*moved, n)})
                if sign * (kept - goal) >= -goal * tol:
                    moved, current = (*moved, n), kept
                    if off(kept) < best[0]:
                        best = (off(kept), start, (other, moved), kept)
                    if off(kept) <= tol / 2:
                        break
            if best[0] <= tol:
                break
    _, ratio, mix, _ = best
    moved = None if mix is None else mix[1]
    prune(model, ratio, None if mix is None else {n: mix[0] for n in mix[1]})
    model.zero_grad(set_to_none=True)
    kept = cost(model) / base
    if off(kept) > tol:
        log.warning("%s: kept %.4f of %s, %.1f%% from the goal %.4f (no ratio mix lands closer)", method, kept,
                    kind, 100 * off(kept), goal)
    log.info("%s: ratio %.4f (%s layers at %s) keeps %.4f of %s (goal %.4f)", method, ratio,
             None if moved is None else len(moved), None if mix is None else mix[0], kept, kind, goal)
    return {"ratio": ratio, "kept": kept, "goal": goal, "layers_moved": None if moved is None else len(moved),
            "moved_to_ratio": None if mix is None else mix[0],
            "trials": len(trials)}


def torch_prune_(model: nn.Module, method: str, target: str, ignore: tuple[str, ...] = ()
                 ) -> list[tuple[nn.Module, str]]:
    """Global magnitude masks with ``torch.nn.utils.prune`` over the weights prunekit's unstructured methods
    prune (:func:`prunekit.masks.prunable_weights`: Linear, Conv and recurrent matrices, minus the grid's
    ``ignore``); returns the masked (module, name) pairs.

    The masks stay attached (``weight_orig`` + ``weight_mask``) so fine-tuning keeps pruned weights at
    zero; call :func:`torch_prune_finalize` after training.
    """
    from torch.nn.utils import prune

    kind, value = parse_target(target)
    check_peer(method, target)
    params = []
    for fqn in prunable_weights(model, ignore):
        module_fqn, _, name = fqn.rpartition(".")
        params.append((model.get_submodule(module_fqn), name))
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=value)
    return params


def torch_prune_finalize(params) -> None:
    from torch.nn.utils import prune

    for module, name in params:
        prune.remove(module, name)
