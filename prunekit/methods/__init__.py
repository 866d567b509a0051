"""One module per paper; importing this package registers every implemented method."""
from __future__ import annotations

import importlib
import pkgutil

from ._config import MethodConfig, option
from ._registry import (
    METHODS, MethodResult, MethodSpec, RunContext, Telemetry, beyond_catalog, catalog, get_method, register_method,
)

__all__ = ["METHODS", "MethodConfig", "MethodResult", "MethodSpec", "RunContext", "Telemetry", "beyond_catalog", "catalog",
           "get_method", "option", "register_method", "load_all"]

_loaded = False


def load_all() -> None:
    """Import every method module so that each registers itself (idempotent)."""
    global _loaded
    if _loaded:
        return
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    _loaded = True
