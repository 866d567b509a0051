"""``sparsify_``: score weights, allocate a sparsity per layer, select by pattern, install the masks."""
from __future__ import annotations

import re
import torch
from torch import nn

from .._checks import checked
from .._registry import unknown_name_message
from ..allocate import erk_densities, layer_sparsities
from ..api.reports import Report
from ..errors import ConfigError
from . import _engine
from .criteria import get_weight_criterion
from .patterns import Pattern, get_pattern, view2d

__all__ = ["MaskReport", "sparsify_", "finalize_", "prunable_weights", "select_masks", "erk_densities",
           "ALLOCATIONS", "mask_report"]

ALLOCATIONS = ("uniform", "global", "erk")
_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_RECURRENT = (nn.RNN, nn.LSTM, nn.GRU)


MaskReport = Report  # the former name: prune_, sparsify_ and finalize_ return one Report type


def _layer_entry(mask: torch.Tensor) -> dict:
    numel = mask.numel()
    pruned = numel - int(mask.sum())
    return {"numel": numel, "pruned": pruned, "sparsity": pruned / numel if numel else 0.0}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _masked_sparsity(layers: dict) -> float:
    numel = sum(v["numel"] for v in layers.values())
    return sum(v["pruned"] for v in layers.values()) / numel if numel else 0.0


def mask_report(model: nn.Module, op: str = "masks") -> Report:
    """Counts of the masks now installed on ``model`` (a :class:`~prunekit.api.Report`)."""
    layers = {fqn: _layer_entry(m) for fqn, m in _engine.get_masks(model).items()}
    n = _params(model)
    return Report(op=op, params_before=n, params_after=n, layers=layers, sparsity_before=_masked_sparsity(layers))


def _matches(key: str, module_fqn: str, param_fqn: str) -> bool:
    if key.startswith("re:"):
        return re.fullmatch(key[3:], module_fqn) is not None or re.fullmatch(key[3:], param_fqn) is not None
    return key in (module_fqn, param_fqn)


def _as_fqn(model: nn.Module, item) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, nn.Module):
        for name, m in model.named_modules():
            if m is item:
                return name
    raise ConfigError(f"ignore/per_layer entries must be FQN strings ('re:' for regexes) or submodules of the "
                      f"model, got {item!r}")


def prunable_weights(model: nn.Module, ignore=(), exempt=(), *, recurrent: bool = True,
                     conv1d: bool = False) -> dict[str, nn.Parameter]:
    """``{param_fqn: weight}`` of Linear and Conv layers, and the input and recurrent matrices
    (``weight_ih_l*``, ``weight_hh_l*``) of RNN/LSTM/GRU layers, in module order, minus ``ignore`` and ``exempt``.

    ``exempt`` may hold ``"first"`` and/or ``"last"``: keep the first / last prunable layer dense (a recurrent
    layer counts as one layer, all its matrices together). ``recurrent=False`` lists Linear and Conv layers
    only (for methods built on a layer's input rows, such as layer-wise Hessians). ``conv1d=True`` also lists
    Hugging Face ``Conv1D`` layers (GPT-2 style linear maps, weight ``[in, out]``), for methods that read
    their weights through :func:`prunekit.criteria.sequential.linear_weight`.
    """
    bad = [e for e in exempt if e not in ("first", "last")]
    if bad:
        raise ConfigError(f"exempt={tuple(exempt)!r}: valid entries are 'first' and 'last' (keep that layer dense)")
    ignore = [_as_fqn(model, i) for i in ignore]
    layers = []  # one entry per layer: [(module fqn, param fqn, param), ...]
    for module_fqn, module in model.named_modules():
        prefix = f"{module_fqn}." if module_fqn else ""
        if (isinstance(module, _PRUNABLE) or (conv1d and type(module).__name__ == "Conv1D")) and \
                isinstance(getattr(module, "weight", None), nn.Parameter):
            layers.append([(module_fqn, f"{prefix}weight", module.weight)])
        elif recurrent and isinstance(module, _RECURRENT):
            mats = [(module_fqn, f"{prefix}{n}", p) for n, p in module.named_parameters(recurse=False)
                    if n.startswith(("weight_ih_l", "weight_hh_l"))]
            if mats:
                layers.append(mats)
    if "first" in exempt:
        layers = layers[1:]
    if "last" in exempt:
        layers = layers[:-1]
    found = [entry for layer in layers for entry in layer]
    out = {}
    used = set()
    for module_fqn, fqn, p in found:
        hit = [k for k in ignore if _matches(k, module_fqn, fqn)]
        used.update(hit)
        if not hit:
            out[fqn] = p
    unused = [k for k in ignore if k not in used and not k.startswith("re:")]
    if unused:
        known = [m for m, _, _ in found]
        raise ConfigError("; ".join(unknown_name_message("layer", k, known, "ignore") for k in unused) +
                          ". Remove the entry or fix its FQN.")
    return out


def _select_units(units, sizes, n_prune_weights: int) -> torch.Tensor:
    """Keep flags: prune the lowest-scored units while the pruned weight count stays <= the budget."""
    order = torch.sort(units, stable=True).indices
    cum = torch.cumsum(sizes[order], 0)
    n_units = int((cum <= n_prune_weights + 0.5).sum())
    keep = torch.ones_like(units, dtype=torch.bool)
    keep[order[:n_units]] = False
    return keep


def select_masks(scores: dict[str, torch.Tensor], pattern: Pattern, sparsities: dict[str, float] | None = None,
                 *, global_sparsity: float | None = None) -> dict[str, torch.Tensor]:
    """Masks from scores: per layer at ``sparsities[fqn]``, or one global ranking at ``global_sparsity``.

    Unit scores are compared across layers as they are (magnitude and SNIP compare directly, as in the
    papers); normalise the scores first when a criterion's scales differ by layer.
    """
    masks = {}
    if pattern.fixed_sparsity is not None:
        for fqn, s in scores.items():
            masks[fqn] = pattern.select_fixed(view2d(s.float())).reshape(s.shape)
        return masks
    pooled = {fqn: pattern.units(view2d(s.float())) for fqn, s in scores.items()}
    if global_sparsity is None:
        for fqn, (u, sz) in pooled.items():
            keep = _select_units(u, sz, round(sparsities[fqn] * scores[fqn].numel()))
            masks[fqn] = pattern.expand(keep, view2d(scores[fqn]).shape).reshape(scores[fqn].shape)
        return masks
    names = list(pooled)
    u = torch.cat([pooled[n][0].cpu() for n in names])
    sz = torch.cat([pooled[n][1].cpu() for n in names])
    total = sum(scores[n].numel() for n in names)
    keep = _select_units(u, sz, round(global_sparsity * total))
    start = 0
    for n in names:
        k = pooled[n][0].numel()
        part = keep[start:start + k].to(scores[n].device)
        masks[n] = pattern.expand(part, view2d(scores[n]).shape).reshape(scores[n].shape)
        start += k
    return masks


def _check_sparsity(name: str, value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        return (f"{name}={value!r} must be a float in [0, 1) (the fraction of weights removed), e.g. 0.9")
    return None


@checked(verb="sparsify")
def sparsify_(
    model: nn.Module,
    *,
    sparsity: float | None = None,
    criterion: str = "magnitude",
    pattern: str = "element",
    global_: bool | None = None,
    calib=None,
    ignore=(),
    allocation: str = "uniform",
    per_layer: dict | None = None,
    exempt=(),
    mode: str = "hard",
    nested: bool = True,
    loss_fn=None,
    seed: int | None = 0,
    scores: dict | None = None,
    overrides: dict | None = None,
) -> Report:
    """Mask the weights of Linear/Conv layers to ``sparsity`` and keep them masked; returns a report.

    ``criterion`` names a weight criterion (``magnitude``, ``random``, ``snip``, ...; ``snip`` needs
    ``calib``, an iterable of ``(inputs, targets)`` batches). ``pattern``: ``element``, ``row``, ``column``,
    ``N:M``, ``block:RxC``. ``allocation``: ``"uniform"`` (default), ``"global"`` or ``"erk"``;
    ``per_layer={fqn or 're:regex': sparsity}`` sets single layers (as in :func:`prunekit.plan`;
    ``overrides=`` and ``global_=True`` are the deprecated spellings of ``per_layer=`` and
    ``allocation="global"``); ``exempt=("first", "last")`` keeps the
    first/last layer dense; ``ignore`` skips layers. With ``nested`` (default) weights already masked stay
    masked. ``mode`` is ``"hard"`` or ``"feedback"`` (see :func:`install_masks_`). ``scores`` bypasses the
    criterion with precomputed ``{param_fqn: scores}``. Everything is validated first; on failure the
    model is unchanged.

    Example:
        >>> import torch, prunekit as pk
        >>> m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> pk.sparsify_(m, sparsity=0.5).sparsity
        0.5
        >>> pk.sparsify_(m, pattern="2:4").layers["0.weight"]["pruned"]
        32
    """
    problems = []
    pat = None
    try:
        pat = get_pattern(pattern)
    except ConfigError as exc:
        problems.append(str(exc))
    try:
        crit = get_weight_criterion(criterion) if scores is None else None
    except ConfigError as exc:
        problems.append(str(exc))
        crit = None
    if global_ is not None or overrides is not None:
        import warnings

        warnings.warn("sparsify_(global_=..., overrides=...) is deprecated; use allocation='global' and "
                      "per_layer={fqn: sparsity}", DeprecationWarning, stacklevel=2)
    if global_ and allocation not in ("uniform", "global"):
        problems.append(f"global_=True contradicts allocation={allocation!r}; pass allocation only")
    elif global_:
        allocation = "global"
    if overrides is not None and per_layer is not None:
        problems.append("per_layer= and its deprecated spelling overrides= were both given; pass per_layer only")
    overrides = per_layer if per_layer is not None else overrides
    if allocation not in ALLOCATIONS:
        problems.append(unknown_name_message("allocation", allocation, ALLOCATIONS, "allocation"))
    if mode not in _engine.MODES:
        problems.append(unknown_name_message("mask mode", mode, _engine.MODES, "mode"))
    overrides = {_as_fqn(model, k): v for k, v in (overrides or {}).items()}
    if pat is not None and pat.fixed_sparsity is not None:
        if sparsity is not None and abs(float(sparsity) - pat.fixed_sparsity) > 1e-9:
            problems.append(f"sparsity={sparsity!r} conflicts with pattern={pattern!r}, whose sparsity is "
                            f"{pat.fixed_sparsity:g}; omit sparsity or pass {pat.fixed_sparsity:g}")
        if overrides:
            problems.append(f"per_layer={overrides!r} cannot apply to the fixed-sparsity pattern {pattern!r}")
        if allocation != "uniform":
            problems.append(f"allocation={allocation!r} cannot apply to the fixed-sparsity pattern {pattern!r}; "
                            f"N:M keeps N of every M weights in every layer")
        sparsity = pat.fixed_sparsity
    elif sparsity is None:
        problems.append("sparsity is required (a float in [0, 1), the fraction of weights removed), e.g. 0.9")
    else:
        problems.append(_check_sparsity("sparsity", sparsity))
    for k, v in overrides.items():
        problems.append(_check_sparsity(f"per_layer[{k!r}]", v))
    if allocation == "global" and overrides:
        problems.append("per_layer cannot be combined with global allocation; use allocation='uniform' or 'erk'")
    if crit is not None and crit.needs_calib and calib is None:
        problems.append(f"criterion={criterion!r} needs calib=[(inputs, targets), ...] batches to score weights")
    params = {}
    try:
        params = prunable_weights(model, ignore, exempt)
    except ConfigError as exc:
        problems.append(str(exc))
    problems = [p for p in problems if p]
    if not problems and not params:
        problems.append("no prunable weights (Linear/Conv) left after ignore/exempt; check ignore=")
    if pat is not None:
        for fqn, p in params.items():
            problems += [f"{fqn}: {msg}" for msg in pat.problems(tuple(view2d(p).shape))]
    unused = [k for k in overrides if not k.startswith("re:") and not any(
        _matches(k, f.rpartition(".")[0], f) for f in params)]
    if unused:
        problems += [unknown_name_message("layer", k, [f.rpartition(".")[0] for f in params], "per_layer")
                     for k in unused]
    if problems:
        raise ConfigError("sparsify_: " + "; ".join(p.rstrip(". ") for p in problems) + ". The model was not changed.")

    sparsity = float(sparsity)
    before = _masked_sparsity({f: _layer_entry(m) for f, m in _engine.get_masks(model).items() if f in params})
    with _engine.transaction(model, params, "sparsify_"):
        if scores is None:
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            scores = crit.fn(model, params, calib=calib, loss_fn=loss_fn, generator=generator)
        missing = [f for f in params if f not in scores]
        if missing:
            raise ConfigError(f"scores lack entries for {missing}; give a score tensor for every pruned weight")
        scores = {f: scores[f].detach().float().clone() for f in params}
        if nested:
            old = _engine.get_masks(model)
            for f in params:
                if f in old:
                    scores[f][~old[f]] = -float("inf")
        if allocation == "global":
            masks = select_masks(scores, pat, global_sparsity=sparsity)
        else:
            masks = select_masks(scores, pat, layer_sparsities(
                {f: tuple(p.shape) for f, p in params.items()}, sparsity, overrides, allocation,
                lambda key, fqn: _matches(key, fqn.rpartition(".")[0], fqn)))
        _engine.install_masks_(model, masks, mode=mode)
    n = _params(model)
    return Report(op="sparsify_", params_before=n, params_after=n, layers={f: _layer_entry(m) for f, m in masks.items()},
                  sparsity_before=before, selection={"criterion": criterion if crit is not None else "precomputed",
                                                     "pattern": pat.spec, "allocation": allocation, "mode": mode})


def finalize_(model: nn.Module) -> Report:
    """Make the masks permanent: zero the pruned weights, remove every mask buffer and hook.

    Afterwards the model is a plain PyTorch model; its ``state_dict()`` has exactly the dense keys and
    loads with ``strict=True`` into the unmodified architecture.

    Example:
        >>> import torch, prunekit as pk
        >>> m = torch.nn.Linear(4, 4)
        >>> _ = pk.sparsify_(m, sparsity=0.75)
        >>> pk.finalize_(m).sparsity, sorted(m.state_dict()), int((m.weight == 0).sum())
        (0.75, ['bias', 'weight'], 12)
    """
    report = mask_report(model, "finalize_")
    _engine.remove_masks_(model, apply=True)
    return report
