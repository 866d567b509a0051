"""The checks of the verbs' arguments (all problems in one ConfigError) and the option vocabulary: layer
names and regexes, sparsity fractions, targets, criteria, reductions, allocations, trace modes."""
from __future__ import annotations

import math
import numbers
import warnings

from .._fqns import module_fqns as _module_fqns  # noqa: F401 - the verbs' name for it
from .._registry import closest
from ..allocate import check_allocation, parse_target
from ..criteria import get_criterion
from ..errors import ConfigError
from ..recipe import check_keep_outputs as _check_keep_outputs  # noqa: F401 - the verbs' name
from ..graph.trace import _walk_outputs

__all__ = ["PRODUCER_CRITERIA", "TRACES", "default_reduce"]

TRACES = ("auto", "real")


def _check_sparsity(v, argument="sparsity"):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 <= float(v) < 1 or math.isnan(v):
        return (f"{argument}={v!r} must be a float in [0, 1) (the fraction of channels removed), "
                f"e.g. {argument}=0.5")
    return None


def _check_device(model, example_inputs):
    p = next(iter(model.parameters()), None)
    if p is None:
        return
    bad = []
    _walk_outputs(example_inputs, lambda t: bad.append(t.device) if t.device != p.device else None)
    if bad:
        raise ConfigError(f"example_inputs are on {bad[0]} but the model is on {p.device}; move them with "
                          f".to({str(p.device)!r})")


def _validate(sparsity, target, criterion, global_, round_to, min_channels, reduce, per_layer):
    problems = []
    if sparsity is not None and target is not None:
        problems.append(f"give either sparsity= or target=, not both (got sparsity={sparsity!r}, target={target!r})")
    if sparsity is None and target is None and not per_layer:
        problems.append("say how much to prune: sparsity=<fraction removed>, target='macs=<fraction kept>' or "
                        "per_layer={fqn: sparsity}")
    if sparsity is not None:
        e = _check_sparsity(sparsity)
        if e:
            problems.append(e)
    if target is not None:
        try:
            parse_target(target)
        except ConfigError as e:
            problems.append(str(e))
    try:
        get_criterion(criterion)
    except ConfigError as e:
        problems.append(str(e))
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        problems.append(f"round_to={round_to!r} must be an int >= 1 (kept widths become multiples of it)")
    if isinstance(min_channels, bool) or not isinstance(min_channels, int) or min_channels < 0:
        problems.append(f"min_channels={min_channels!r} must be an int >= 0")
    if reduce is not None and reduce not in ("group", "producer"):
        hint = closest(str(reduce), ["group", "producer"])
        problems.append(f"reduce={reduce!r} is not valid" + (f"; did you mean {hint!r}?" if hint else "") +
                        "; choose 'group' or 'producer'")
    if global_ is not None and not isinstance(global_, bool):
        problems.append(f"global_={global_!r} must be True or False (deprecated: use allocation='global')")
    for k, v in (per_layer or {}).items():
        e = _check_sparsity(v, f"per_layer[{k!r}]")
        if e:
            problems.append(e)
    if problems:
        raise ConfigError("; ".join(problems))


# criteria whose papers define the score on the producing filters alone (Li et al. 2017: a filter's own |W|;
# He et al. 2019: distances between the filters of one layer): their default reduction is "producer"
PRODUCER_CRITERIA = ("l1", "l2", "fpgm")


def default_reduce(criterion: str) -> str:
    """The reduction ``plan`` uses when none is given: ``"producer"`` for :data:`PRODUCER_CRITERIA`, else
    ``"group"``."""
    return "producer" if criterion in PRODUCER_CRITERIA else "group"


def _resolve_allocation_reduce(allocation, global_, reduce, criterion) -> tuple:
    """``(allocation, reduce)`` after the deprecated ``global_`` and the criterion's default reduction."""
    if global_ is not None:
        warnings.warn("plan(global_=...) is deprecated; use allocation='global' or allocation='uniform'",
                      DeprecationWarning, stacklevel=3)
        if global_ and allocation not in ("uniform", "global"):
            raise ConfigError(f"global_=True contradicts allocation={allocation!r}; pass allocation only")
        allocation = "global" if global_ else allocation
    problem = check_allocation(allocation)
    if problem:
        raise ConfigError(problem)
    return allocation, default_reduce(criterion) if reduce is None else reduce
