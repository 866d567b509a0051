"""Walking nested inputs and outputs, and calling a model on its example inputs.

Shared by the recorder (:mod:`.trace`), the op log (:mod:`.oplog`), the fast trace's value tracking
(:mod:`.values`) and, outside the graph package, by every caller that runs a model on ``example_inputs``.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..errors import ConfigError


def _tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for y in x:
            yield from _tensors(y)


def _walk_outputs(x, fn, depth=0):
    if depth > 6:
        return
    if isinstance(x, torch.Tensor):
        fn(x)
    elif isinstance(x, dict):
        for v in x.values():
            _walk_outputs(v, fn, depth + 1)
    elif isinstance(x, (list, tuple)):
        for v in x:
            _walk_outputs(v, fn, depth + 1)
    elif dataclasses.is_dataclass(x) and not isinstance(x, type):
        for f in dataclasses.fields(x):
            _walk_outputs(getattr(x, f.name, None), fn, depth + 1)


def output_entries(output) -> list:
    """The top-level entries of a model's output as ``[(key, value)]``: a dict's or Hugging Face
    ``ModelOutput``'s names, a tuple's or list's indices, a dataclass's fields; ``[(0, tensor)]`` for one tensor."""
    if isinstance(output, dict):
        return list(output.items())
    if isinstance(output, (list, tuple)):
        return list(enumerate(output))
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        return [(f.name, getattr(output, f.name, None)) for f in dataclasses.fields(output)]
    return [(0, output)]


def resolve_keep_outputs(output, keep) -> list | None:
    """The output keys whose shapes must be kept: None for ``keep="all"``, else the keys of ``keep`` (a name or
    index, or a non-empty list of them; the verbs check that form with ``recipe.check_keep_outputs``) checked
    against ``output``; a key that names no output, or an output that holds
    no tensor, is refused with the outputs there are."""
    if isinstance(keep, str) and keep == "all":
        return None
    wanted = [keep] if isinstance(keep, (str, int)) else list(keep)
    entries = output_entries(output)
    has_tensor = {}
    for k, v in entries:
        found = []
        _walk_outputs(v, found.append)
        has_tensor[k] = bool(found)
    available = ", ".join(repr(k) for k, v in entries if has_tensor[k]) or "none"
    problems, keys = [], []
    for k in wanted:
        if k not in has_tensor:
            near = [a for a in has_tensor if isinstance(a, str) and isinstance(k, str) and (k in a or a in k)]
            problems.append(f"the model has no output {k!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
        elif not has_tensor[k]:
            problems.append(f"output {k!r} holds no tensor, so it has no shape to keep")
        elif k not in keys:
            keys.append(k)
    if problems:
        raise ConfigError(f"keep_outputs={keep!r}: " + "; ".join(problems) + f". The model's outputs: {available}; "
                          f"name the ones whose shape must not change, or 'all'")
    return keys


def select_outputs(output, keys: list | None):
    """The part of ``output`` that ``keys`` (from :func:`resolve_keep_outputs`) keeps: all of it for None."""
    if keys is None:
        return output
    entries = dict(output_entries(output))
    return [entries.get(k) for k in keys]


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (or buffer); CPU for a model with neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def move_to(obj, device):
    """``obj`` (a tensor, or tuples / lists / dicts of them) with every tensor on ``device``; other values kept."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: move_to(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(move_to(v, device) for v in obj)
    return obj


def call_model(model: nn.Module, example_inputs):
    """Run ``model`` on a tensor, a tuple of positional inputs or a dict of keyword inputs."""
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)
