"""prunekit: the neural-network pruning literature as one tested, measured PyTorch library.

Example:
    >>> import prunekit as pk
    >>> sorted(pk.__all__)[:3]
    ['Callback', 'ConfigError', 'Plan']
"""
from __future__ import annotations

import importlib

from .errors import ConfigError, PruneError, PrunekitError

__version__ = "0.1.0"

# name -> (module, attribute); resolved lazily so `import prunekit` stays light (torch + numpy only)
_EXPORTS = {
    "plan": ("prunekit.api", "plan"),
    "plan_channels": ("prunekit.api", "plan_channels"),
    "prune_": ("prunekit.api", "prune_"),
    "inspect": ("prunekit.api", "inspect"),
    "Plan": ("prunekit.api", "Plan"),
    "Report": ("prunekit.api", "Report"),
    "save": ("prunekit.io", "save"),
    "load": ("prunekit.io", "load"),
    "sparsify_": ("prunekit.masks", "sparsify_"),
    "finalize_": ("prunekit.masks", "finalize_"),
    "fit": ("prunekit.train", "fit"),
    "search": ("prunekit.train.search", "search"),
    "evaluate": ("prunekit.train", "evaluate"),
    "TrainConfig": ("prunekit.train", "TrainConfig"),
    "Callback": ("prunekit.train", "Callback"),
    "register_criterion": ("prunekit.criteria", "register_criterion"),
    "register_handler": ("prunekit.graph", "register_handler"),
    "register_method": ("prunekit.methods", "register_method"),
}
_SUBMODULES = ("data", "models", "methods", "criteria", "masks", "train", "measure", "report", "testing",
               "graph", "surgery", "allocate", "schedules", "bench")

__all__ = sorted([*_EXPORTS, "ConfigError", "PruneError", "PrunekitError", *_SUBMODULES])


def __getattr__(name: str):
    if name in _EXPORTS:
        module, attr = _EXPORTS[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        value = importlib.import_module(f"prunekit.{name}")
        globals()[name] = value
        return value
    raise AttributeError(f"module 'prunekit' has no attribute {name!r}")


def __dir__():
    return __all__
