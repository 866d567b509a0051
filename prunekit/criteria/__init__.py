"""Channel criteria: a registry of plain functions scoring the channels of one coupled member.

A criterion is ``fn(view) -> Tensor[n_channels]`` (higher = keep), registered with
``@register_criterion(name, needs=())``; ``needs`` ⊆ {"grads", "activations", "batch_grads"} asks the engine to run
the calibration batches once through hooks and fill the view's ``grad`` / ``activations`` /
``collect_inputs`` (``"batch_grads"`` also keeps each batch's gradient in ``grad_batches``). The engine
calls the criterion once per coupled member of each group and combines the
members' scores in a separate step (``reduce="group"`` or ``"producer"``).

The view (:class:`ChannelView`) has exactly these fields:

- ``fqn``: parameter or buffer path of the member, e.g. ``"layer1.0.conv1.weight"``
- ``dim``: the member's channel dim; ``role``: ``"producer"`` | ``"consumer"`` | ``"other"``
- ``channels``: ``[n_channels]`` group channel index of each row
- ``weight``: ``[n_channels, rest]`` the member tensor, channel dim first; the positions of one channel
  (e.g. the 64 rows of an attention head) are concatenated into ``rest``
- ``grad``: same layout as ``weight``, the gradient summed over ``calib`` (or None)
- ``grad_batches``: a list of such gradients, one per ``calib`` batch (only with ``"batch_grads"``)
- ``activations``: ``[n_channels, n]`` output of the producing module over ``calib``, channel dim first
  (or None)
- ``module``, ``module_fqn``: the module owning the tensor
- ``group``: the :class:`prunekit.graph.Group` (all members, width)
- ``consumers``: list of ``ConsumerView(fqn, module_fqn, module, dim, weight)``, the consuming layers'
  weights sliced the same way (``[n_channels, rest]``), for reconstruction criteria (ThiNet, CP, NISP)
- ``collect_inputs(module_fqn) -> list[Tensor]``: recorded inputs of that module over ``calib``
- ``seed``: for stochastic criteria

Calibration passes run through one collector, :func:`prunekit.criteria.collect.collect` (the Taylor and
reconstruction passes, L-OBS's layer-wise Hessians, the filter methods' recordings);
:func:`~prunekit.criteria.collect.collect_for_scoring` returns exactly what the engine's pass returns.

Example:
    >>> import torch
    >>> from prunekit.criteria import get_criterion, ChannelView
    >>> import numpy as np
    >>> v = ChannelView("w", 0, "producer", np.arange(2), torch.tensor([[3., -4.], [1., 0.]]))
    >>> get_criterion("l2").fn(v).tolist()
    [5.0, 1.0]
"""
from __future__ import annotations

from . import norms  # noqa: F401  (registers l1, l2, random)
from ._base import (CRITERIA, ChannelView, ConsumerView, CriterionSpec, channel_rows, get_criterion, normalise,
                    reduce_scores, register_criterion, score_member, select_lowest)
from .collect import Calibration, ChannelStats, collect, collect_for_scoring

__all__ = ["CRITERIA", "Calibration", "ChannelStats", "ChannelView", "ConsumerView", "CriterionSpec", "channel_rows",
           "collect", "collect_for_scoring", "get_criterion", "normalise", "reduce_scores", "register_criterion",
           "score_member", "select_lowest"]


def _load_others():
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_") and info.name != "norms":
            importlib.import_module(f"{__name__}.{info.name}")


_load_others()
