"""Models by name: small reference networks of the pruning literature and outside architectures.

``create(spec)`` builds a model with random weights. Built-in names: ``lenet300`` (LeNet-300-100),
``lenet5``, ``vgg-small``, ``vgg11``/``vgg13``/``vgg16``/``vgg19`` (CIFAR-style, with BN),
``resnet20``/``resnet32``/``resnet44``/``resnet56``/``resnet110`` (CIFAR-style), ``mobilenetv2`` (for
small inputs), ``lstm`` (rows of an image, or token ids, as a sequence) and ``gpt-tiny`` (a small GPT-style
language model). Outside specs: ``torchvision:NAME``, ``timm:NAME`` and ``hf:NAME`` where NAME is one of
:data:`prunekit.models.external.HF_CONFIGS`; all are built with random weights, nothing is downloaded.

Example:
    >>> import torch
    >>> from prunekit import models
    >>> m = models.create("lenet5", num_classes=10, in_channels=1, input_size=28)
    >>> m(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch.nn as nn

from .._registry import Registry, unknown_name_message
from ..errors import ConfigError
from .external import HF_CONFIGS

__all__ = ["create", "list_models", "register_model", "MODELS", "example_inputs"]

#: name -> builder(num_classes, in_channels, input_size, **kw) -> nn.Module
MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
_PREFIXES = ("torchvision", "timm", "hf")


def register_model(name: str):
    """Register ``builder(*, num_classes, in_channels, input_size, **options) -> nn.Module`` as ``name``."""
    return MODELS.register(name)


def list_models() -> list[str]:
    """Built-in model names, then the outside prefixes (``torchvision:``, ``timm:``, ``hf:<config>``)."""
    return MODELS.names() + ["torchvision:NAME", "timm:NAME"] + [f"hf:{k}" for k in sorted(HF_CONFIGS)]


def _check_int(arg: str, value, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{arg}={value!r} must be an int >= {minimum}")


def create(spec: str, *, num_classes: int = 10, in_channels: int = 1, input_size: int = 28, **kw) -> nn.Module:
    """Build the model named ``spec`` with random weights.

    ``input_size`` is the side of a square input image (the context length for ``gpt-tiny``); ``kw`` are
    the model's own options (e.g. ``width=0.5`` for VGG/ResNet/MobileNetV2, ``hidden_size`` for ``lstm``,
    ``vocab_size`` for ``gpt-tiny``). Unknown names or options raise ``ConfigError``.

    Example:
        >>> sum(p.numel() for p in create("lenet300").parameters())
        266610
    """
    if not isinstance(spec, str):
        raise ConfigError(f"model spec={spec!r} must be a string such as 'resnet20' or 'timm:resnet18'")
    _check_int("num_classes", num_classes)
    _check_int("in_channels", in_channels)
    _check_int("input_size", input_size)
    prefix, sep, name = spec.partition(":")
    if sep:
        if prefix not in _PREFIXES:
            raise ConfigError(unknown_name_message("model prefix", prefix + ":", [p + ":" for p in _PREFIXES], "spec")
                              + f"; e.g. spec='timm:{name}'")

        return external.create_external(prefix, name, num_classes=num_classes, in_channels=in_channels,
                                        input_size=input_size, **kw)
    builder = MODELS.get(spec, argument="spec")
    params = inspect.signature(builder).parameters
    accepted = [p for p in params if p not in ("num_classes", "in_channels", "input_size")]
    bad = sorted(set(kw) - set(accepted))
    if bad:
        raise ConfigError(f"model {spec!r} has no option(s) {bad}; its options are {accepted or 'none'}")
    return builder(num_classes=num_classes, in_channels=in_channels, input_size=input_size, **kw)


def example_inputs(model: nn.Module, batch: int = 1):
    """A zero input batch of the shape ``model`` was built for (``model.example_input_shape``)."""
    import torch

    shape = getattr(model, "example_input_shape", None)
    if shape is None:
        raise ConfigError(f"{type(model).__name__} does not record example_input_shape; pass example inputs "
                          "yourself (e.g. data.load(...).example_inputs())")
    dtype = torch.long if getattr(model, "example_input_dtype", "float") == "long" else torch.float32
    return torch.zeros(batch, *shape, dtype=dtype)


from . import cnn, external, mobilenet, resnet, resolution, sequence
