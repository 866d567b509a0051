"""Walking nested inputs and outputs, and calling a model on its example inputs.

Shared by the recorder (:mod:`.trace`), the op log (:mod:`.oplog`), the fast trace's value tracking
(:mod:`.values`) and, outside the graph package, by every caller that runs a model on ``example_inputs``.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn


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
