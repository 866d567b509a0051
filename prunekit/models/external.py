"""Outside architectures by spec: ``torchvision:NAME``, ``timm:NAME`` and ``hf:CONFIG`` (random weights).

Nothing is downloaded: torchvision and timm models are built with ``weights=None`` / ``pretrained=False``,
and Hugging Face models from the small configs in :data:`HF_CONFIGS` with ``from_config``.
"""
from __future__ import annotations

import inspect
import logging

import torch.nn as nn

from .._registry import unknown_name_message
from ..errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["create_external", "HF_CONFIGS"]

#: name -> (config class, model class, config fields). ``{seq}``/``{classes}``/``{size}``/``{channels}``
#: are filled from ``create``'s arguments; any field can be overridden with ``create(..., field=value)``.
HF_CONFIGS: dict[str, tuple[str, str, dict]] = {
    "bert-tiny": ("BertConfig", "BertForSequenceClassification", dict(
        vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
        max_position_embeddings="{seq}", num_labels="{classes}")),
    # causal language models: the classes of next-token prediction are the vocabulary (as for gpt-tiny), so a
    # token data set's num_classes builds a matching model
    "gpt2-tiny": ("GPT2Config", "GPT2LMHeadModel", dict(
        vocab_size="{classes}", n_embd=64, n_layer=2, n_head=4, n_positions="{seq}")),
    "llama-tiny": ("LlamaConfig", "LlamaForCausalLM", dict(  # grouped-query attention: 4 query heads, 2 kv heads
        vocab_size="{classes}", hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings="{seq}")),
    "vit-tiny": ("ViTConfig", "ViTForImageClassification", dict(
        image_size="{size}", patch_size="{patch}", num_channels="{channels}", hidden_size=64, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=128, num_labels="{classes}")),
    "t5-tiny": ("T5Config", "T5ForConditionalGeneration", dict(
        vocab_size=1000, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
        decoder_start_token_id=0)),
}


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            if mod.in_channels == in_channels:
                return
            if mod.groups != 1:
                break
            new = nn.Conv2d(in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                            mod.dilation, 1, mod.bias is not None, mod.padding_mode)
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(parent, name.rpartition(".")[2], new)
            return
    raise ConfigError(f"cannot adapt this model to in_channels={in_channels}: no plain first Conv2d found; "
                      "use in_channels=3")


def _torchvision(name, num_classes, in_channels, input_size, **kw):
    try:
        import torchvision
    except ImportError as e:
        raise ConfigError("spec 'torchvision:...' needs torchvision: pip install 'prunekit[vision]'") from e
    names = torchvision.models.list_models()
    if name not in names:
        raise ConfigError(unknown_name_message("torchvision model", name, names, "spec"))
    if name.startswith("vit_") and "image_size" not in kw:
        kw["image_size"] = input_size
    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kw)
    except TypeError as e:
        raise ConfigError(f"torchvision model {name!r} rejected options {sorted(kw)}: {e}") from e
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    model.example_input_shape = (in_channels, input_size, input_size)
    return model


def _timm(name, num_classes, in_channels, input_size, **kw):
    try:
        import timm
    except ImportError as e:
        raise ConfigError("spec 'timm:...' needs timm: pip install 'prunekit[zoo]'") from e
    names = timm.list_models()
    if name not in names:
        raise ConfigError(unknown_name_message("timm model", name, names, "spec"))
    base = dict(pretrained=False, num_classes=num_classes, in_chans=in_channels, **kw)
    try:
        # transformers need the input size at build time; CNNs do not take img_size at all
        model = timm.create_model(name, img_size=input_size, **base) if "img_size" not in kw else timm.create_model(name, **base)
    except TypeError:
        model = timm.create_model(name, **base)
    model.example_input_shape = (in_channels, input_size, input_size)
    return model


def _hf(name, num_classes, in_channels, input_size, **kw):
    if name not in HF_CONFIGS:
        raise ConfigError(unknown_name_message("hf config", name, HF_CONFIGS, "spec")
                          + "; only these small built-in configs are supported (nothing is downloaded)")
    try:
        import transformers
    except ImportError as e:
        raise ConfigError("spec 'hf:...' needs transformers: pip install 'prunekit[zoo]'") from e
    config_cls, model_cls, fields = HF_CONFIGS[name]
    patch = next((p for p in (4, 7, 8, 2, 1) if input_size % p == 0), 1)
    fill = {"{seq}": max(input_size, 128), "{classes}": num_classes, "{size}": input_size,
            "{channels}": in_channels, "{patch}": patch}
    fields = {k: fill.get(v, v) if isinstance(v, str) else v for k, v in fields.items()}
    config_type = getattr(transformers, config_cls)
    known = set(config_type().to_dict()) | set(inspect.signature(config_type.__init__).parameters)
    bad = sorted(set(kw) - known)
    if bad:
        raise ConfigError(f"{config_cls} has no field(s) {bad} (spec 'hf:{name}'); see the transformers docs "
                          f"of {config_cls} for valid fields")
    config = config_type(**{**fields, **kw})
    model = getattr(transformers, model_cls)(config)
    if name == "vit-tiny":
        model.example_input_shape = (in_channels, input_size, input_size)
    else:
        model.example_input_shape, model.example_input_dtype = (input_size,), "long"
    return model.eval()


_BUILDERS = {"torchvision": _torchvision, "timm": _timm, "hf": _hf}


def create_external(prefix: str, name: str, *, num_classes: int, in_channels: int, input_size: int, **kw) -> nn.Module:
    if not name:
        raise ConfigError(f"spec '{prefix}:' needs a model name after the colon, e.g. '{prefix}:resnet18'")
    return _BUILDERS[prefix](name, num_classes, in_channels, input_size, **kw)
