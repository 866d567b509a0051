"""The structural-pruning verbs: ``plan`` (changes nothing), ``prune_`` (in place), ``inspect``.

One module per job (lowest first; each imports only the ones above it in this list):

- :mod:`~prunekit.api.plans`: the :class:`Plan` data and its JSON form;
- :mod:`~prunekit.api.reports`: the :class:`Report` every model-changing verb returns;
- :mod:`~prunekit.api.options`: argument checks and the option vocabulary (targets, criteria, reductions);
- :mod:`~prunekit.api.scoring`: the calibration run and :func:`score_groups`;
- :mod:`~prunekit.api.planning`: :func:`plan` and :func:`plan_channels`;
- :mod:`~prunekit.api.applying`: :func:`prune_` (surgery, validation, Hugging Face config sync);
- :mod:`~prunekit.api.inspection`: :func:`inspect`;
- :mod:`~prunekit.api.sensitivity`: per-layer sensitivity curves (prune one layer at a time, evaluate).

Example:
    >>> import torch, prunekit as pk
    >>> from prunekit.testing import models
    >>> model, x = models()["chain"]()
    >>> p = pk.plan(model, x, sparsity=0.5)
    >>> report = pk.prune_(model, p, example_inputs=x)
    >>> report.params_after == p.predicted["params_after"]
    True
"""
from __future__ import annotations

from ..graph import build_graph  # noqa: F401 - `from prunekit.api import build_graph` (tests, user code)
from ..errors import BrokenForward, TraceNotConfirmed  # noqa: F401  (raised by surgery, caught by prune_)
from .applying import _apply, count_params, prune_  # noqa: F401
from .inspection import Inspection, inspect
from .options import (PRODUCER_CRITERIA, TRACES, _check_device, _check_sparsity, _module_fqns,  # noqa: F401
                      _resolve_allocation_reduce, _validate, default_reduce)
from .planning import _make_plan, _plan, _segments, plan, plan_channels  # noqa: F401
from .plans import Plan, PlanGroup
from .reports import Report
from .scoring import _default_loss, score_groups  # noqa: F401
from .subnets import Subnets

__all__ = ["plan", "prune_", "inspect", "Plan", "PlanGroup", "Report", "Inspection", "count_params", "Subnets"]
