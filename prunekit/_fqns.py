"""Layer names as the verbs take them (``ignore=``, ``channels=`` keys): FQN strings, ``'re:<regex>'``
patterns and module objects, resolved against ``model.named_modules()`` with closest-name errors.

Example:
    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2))
    >>> sorted(module_fqns(m, ["re:[02]"], "ignore").values())
    ['0', '2']
"""
from __future__ import annotations

import re

from torch import nn

from ._registry import closest
from .errors import ConfigError

__all__ = ["module_fqns"]


def module_fqns(model, items, argument: str) -> dict:
    """FQN strings ('re:' regexes) or module objects -> {id(module): fqn}; unmatched patterns are errors."""
    if isinstance(items, (str, nn.Module)):
        items = [items]
    named = dict(model.named_modules())
    by_id = {id(m): n for n, m in named.items()}
    out: dict = {}
    problems = []
    for it in items:
        if isinstance(it, nn.Module):
            if id(it) not in by_id:
                problems.append(f"{argument}: module {type(it).__name__} is not part of the model")
            else:
                out[id(it)] = by_id[id(it)]
            continue
        if not isinstance(it, str):
            problems.append(f"{argument}: {it!r} is neither an FQN string nor a module")
            continue
        if it.startswith("re:"):
            try:
                rx = re.compile(it[3:])
            except re.error as e:
                problems.append(f"{argument}: bad regex {it!r}: {e}")
                continue
            hits = [n for n in named if n and rx.fullmatch(n)]
        else:
            hits = [it] if it in named and it else []
        if not hits:
            hint = closest(it[3:] if it.startswith("re:") else it, [n for n in named if n])
            problems.append(f"{argument}: {it!r} matches no module" + (f"; did you mean {hint!r}?" if hint else "") +
                            " Use a module FQN from model.named_modules() or 're:<regex>'")
        for n in hits:
            out[id(named[n])] = n
    if problems:
        raise ConfigError("; ".join(problems))
    return out
