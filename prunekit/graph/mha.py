"""``nn.MultiheadAttention`` computed op by op, so that the trace sees its heads and embedding.

torch's ``nn.MultiheadAttention`` computes with ``F.multi_head_attention_forward``, which requires the
inner width (``num_heads * head_dim``) to equal the query's width (``embed_dim``). Removing a head, or a
channel of the residual stream that feeds the attention, breaks that rule, so a plain instance cannot be
pruned at all.

:class:`PrunableMultiheadAttention` is a subclass with the same parameters, buffers, constructor and call
signature, whose forward spells the computation out with ``linear``, ``view`` and
``scaled_dot_product_attention``. Its outputs equal the parent's (up to float rounding), and the engine's
ordinary rules see through it: heads become prunable units (a head's query, key and value rows of
``in_proj_weight`` and its columns of ``out_proj.weight`` go together) and the embedding is coupled with
whatever produces and reads it. The recorder (:func:`.trace.record`) traces supported instances through this
class and puts the class back after the forward; surgery (``prunekit.surgery.mha``) converts an instance in
place (``module.__class__``; no copy) only when a prune changes its weights, and ``prunekit.load`` converts
it again when it rebuilds a saved model.

Supported: packed or separate q/k/v projections (``kdim``/``vdim``), with or without bias,
``batch_first`` either way, unbatched inputs, ``attn_mask`` (2-D or 3-D, boolean or additive),
``key_padding_mask``, ``is_causal``, dropout, and ``need_weights`` with or without head averaging.
Instances built with ``add_bias_kv`` or ``add_zero_attn`` keep the parent class and stay non-prunable
(:func:`unsupported_constraint`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .tensors import _walk_outputs


def supported(module: nn.Module) -> bool:
    """Whether ``module`` is a plain ``nn.MultiheadAttention`` this class can stand in for."""
    return (type(module) is nn.MultiheadAttention and module.bias_k is None and module.bias_v is None
            and not module.add_zero_attn)


def _to_additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    if mask is None or mask.is_floating_point():
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))


class PrunableMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` computed op by op, so heads and embedding prune independently."""

    def _projections(self):
        if self.in_proj_weight is not None:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        return (w_q, w_k, w_v), b

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        batched = query.dim() == 3
        if not batched:  # [L, E] -> [1, L, E]
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:  # [L, B, E] -> [B, L, E]
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        bsz, tgt_len, src_len = query.shape[0], query.shape[1], key.shape[1]
        (w_q, w_k, w_v), (b_q, b_k, b_v) = self._projections()
        heads, head_dim = self.num_heads, self.head_dim
        q = F.linear(query, w_q, b_q).view(bsz, tgt_len, heads, head_dim).transpose(1, 2)
        k = F.linear(key, w_k, b_k).view(bsz, src_len, heads, head_dim).transpose(1, 2)
        v = F.linear(value, w_v, b_v).view(bsz, src_len, heads, head_dim).transpose(1, 2)

        mask = _to_additive(attn_mask, q.dtype)
        if mask is not None and mask.dim() == 3:  # [B*H, Lq, Lk]
            mask = mask.view(bsz, heads, tgt_len, src_len)
        pad = _to_additive(key_padding_mask, q.dtype)
        if pad is not None:
            pad = pad.view(bsz, 1, 1, src_len)
            mask = pad if mask is None else mask + pad
        causal = bool(is_causal) and mask is None
        dropout = self.dropout if self.training else 0.0

        weights = None
        if need_weights:
            scores = (q * (1.0 / math.sqrt(head_dim))) @ k.transpose(-2, -1)
            if causal:
                mask = torch.ones(tgt_len, src_len, dtype=torch.bool, device=q.device).tril().logical_not()
                mask = _to_additive(mask, q.dtype)
            if mask is not None:
                scores = scores + mask
            weights = scores.softmax(-1)
            if dropout > 0:  # as torch does, the returned weights are the dropped-out ones
                weights = F.dropout(weights, dropout)
            out = weights @ v
            weights = weights.mean(1) if average_attn_weights else weights
            if not batched:
                weights = weights.squeeze(0)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)
        out = out.transpose(1, 2).reshape(bsz, tgt_len, heads * head_dim)
        out = F.linear(out, self.out_proj.weight, self.out_proj.bias)
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


def unsupported_constraint(rec, mod, fqn, inputs, output):
    """Checked after an ``nn.MultiheadAttention`` forward the recorder did not trace through the twin."""
    # plain instances are traced through their op-by-op twin (above); the ones left here were built
    # with add_bias_kv or add_zero_attn, which the twin does not compute: all their dims stay
    reason = (f"nn.MultiheadAttention {fqn!r} with add_bias_kv/add_zero_attn: its heads and embedding are not "
              f"analysed; build it without those options (or with separate q/k/v projections) to prune them")
    for name, p in mod.named_parameters():
        if rec.known(p):
            rec.kill_all(rec.get(p), reason)
    for t in inputs:
        rec.kill_all(rec.get(t), reason)
    _walk_outputs(output, lambda t: rec.kill_all(rec.get(t), reason))
