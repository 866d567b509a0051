"""Module attribute fixers: after parameters shrank, make each module's size attributes match them.

A fixer is ``fix(module, ctx)``: ``ctx.set(obj, name, value)`` records the old value for rollback and
``ctx.in_shape(module)`` gives the new shape of the module's first input (for modules whose weights do
not say it: depthwise convs, norms without affine weights).
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from .mha import sync_attrs_

FIXERS: list[tuple[type | str, Callable]] = []

# integer attributes that size an op (``view(B, T, self.num_heads, -1)``): updated when the op's size did
SIZE_ATTRS = ("num_heads", "num_attention_heads", "n_head", "n_heads", "heads", "num_key_value_heads",
              "num_kv_heads", "n_kv_heads", "n_kv_head", "all_head_size", "split_size", "inner_dim",
              "hidden_size", "embed_dim", "hidden_dim", "intermediate_size", "dim", "c", "c_", "nf", "inner_size",
              "num_groups", "groups", "out_features", "in_features", "n_embd", "d_model", "inner_dim_size",
              "num_key_value_groups", "head_count", "kv_heads", "q_heads")


def register_fixer(target: type | str):
    """Register ``fn(module, ctx)`` for modules of ``target`` (a class or a class name)."""

    def deco(fn):
        FIXERS.append((target, fn))
        return fn

    return deco


def fixers_for(module: nn.Module):
    out = []
    for target, fn in FIXERS:
        if isinstance(target, str):
            if type(module).__name__ == target:
                out.append(fn)
        elif isinstance(module, target):
            out.append(fn)
    return out


@register_fixer(nn.modules.conv._ConvNd)
def _fix_conv(m, ctx):
    w = m.weight
    old_groups, old_in = m.groups, m.in_channels
    depthwise = old_groups > 1 and old_groups == old_in
    if not m.transposed:
        shape = ctx.in_shape(m)
        new_in = shape[-len(m.kernel_size) - 1] if shape is not None else w.shape[1] * old_groups
        if depthwise:
            ctx.set(m, "groups", new_in)
            ctx.set(m, "in_channels", new_in)
        else:
            ctx.set(m, "in_channels", w.shape[1] * old_groups)
        ctx.set(m, "out_channels", w.shape[0])
    else:
        ctx.set(m, "in_channels", w.shape[0])
        if depthwise:
            ctx.set(m, "groups", w.shape[0])
            ctx.set(m, "out_channels", w.shape[1] * w.shape[0])
        else:
            ctx.set(m, "out_channels", w.shape[1] * old_groups)


@register_fixer(nn.Linear)
def _fix_linear(m, ctx):
    ctx.set(m, "in_features", m.weight.shape[1])
    ctx.set(m, "out_features", m.weight.shape[0])


@register_fixer("Conv1D")  # transformers' GPT-2 style linear with weight [in, out]
def _fix_hf_conv1d(m, ctx):
    if hasattr(m, "nf"):
        ctx.set(m, "nf", m.weight.shape[1])
    if hasattr(m, "nx"):
        ctx.set(m, "nx", m.weight.shape[0])


@register_fixer(nn.modules.batchnorm._NormBase)
def _fix_bn(m, ctx):
    shape = ctx.in_shape(m)
    if m.weight is not None:
        n = m.weight.shape[0]
    elif getattr(m, "running_mean", None) is not None:
        n = m.running_mean.shape[0]
    elif shape is not None:
        n = shape[1] if len(shape) > 1 else shape[0]
    else:
        return
    ctx.set(m, "num_features", n)


@register_fixer(nn.RMSNorm)
@register_fixer(nn.LayerNorm)
def _fix_normalized_shape(m, ctx):
    k = len(m.normalized_shape)
    if m.weight is not None:
        ctx.set(m, "normalized_shape", tuple(m.weight.shape))
    elif ctx.in_shape(m) is not None:
        ctx.set(m, "normalized_shape", tuple(ctx.in_shape(m)[-k:]))


@register_fixer(nn.GroupNorm)
def _fix_gn(m, ctx):
    shape = ctx.in_shape(m)
    c = m.weight.shape[0] if m.weight is not None else (shape[1] if shape is not None else m.num_channels)
    old_c, old_g = m.num_channels, m.num_groups
    if old_g > 1:
        per = old_c // old_g
        ctx.set(m, "num_groups", max(c // per, 1))
    ctx.set(m, "num_channels", c)


@register_fixer(nn.Embedding)
def _fix_emb(m, ctx):
    ctx.set(m, "num_embeddings", m.weight.shape[0])
    ctx.set(m, "embedding_dim", m.weight.shape[1])


@register_fixer(nn.PReLU)
def _fix_prelu(m, ctx):
    ctx.set(m, "num_parameters", m.weight.numel())


@register_fixer(nn.RNNBase)
def _fix_rnn(m, ctx):
    ctx.set(m, "hidden_size", m.weight_hh_l0.shape[1])
    ctx.set(m, "input_size", m.weight_ih_l0.shape[1])


@register_fixer("PrunableMultiheadAttention")
def _fix_mha(m, ctx):
    sync_attrs_(m, ctx.set)
