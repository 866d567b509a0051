"""Sequence models for the recurrent and transformer pruning methods: an LSTM classifier and a tiny GPT."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from . import register_model

__all__ = ["LSTMClassifier", "GPT", "Block", "CausalSelfAttention"]


class LSTMClassifier(nn.Module):
    """An LSTM over a sequence, classifying from the last hidden state.

    Image input ``[B, C, H, W]`` is read row by row: ``H`` steps of ``C * W`` features. With
    ``vocab_size`` set, input is token ids ``[B, T]`` embedded to ``embed_dim`` first.
    """

    def __init__(self, num_classes=10, in_channels=1, input_size=28, hidden_size=128, num_layers=1,
                 vocab_size=None, embed_dim=64):
        super().__init__()
        self.embed = None
        if vocab_size is not None:
            self.embed = nn.Embedding(vocab_size, embed_dim)
            features = embed_dim
            self.example_input_shape, self.example_input_dtype = (input_size,), "long"
        else:
            features = in_channels * input_size
            self.example_input_shape = (in_channels, input_size, input_size)
        self.lstm = nn.LSTM(features, hidden_size, num_layers=num_layers, batch_first=True)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, x):
        if self.embed is not None:
            x = self.embed(x)  # [B, T, E]
        else:
            b, c, h, w = x.shape
            x = x.permute(0, 2, 1, 3).reshape(b, h, c * w)  # [B, H, C*W]: one row per step
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention with separate q/k/v/o projections (each prunable on its own)."""

    def __init__(self, d_model: int, n_head: int, dropout: float = 0.0):
        super().__init__()
        if d_model % n_head:
            raise ConfigError(f"d_model={d_model} must be divisible by n_head={n_head}")
        self.n_head, self.head_dim, self.dropout = n_head, d_model // n_head, dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.o_proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        b, t, _ = x.shape

        def heads(y):  # [B, T, H*D] -> [B, H, T, D]
            return y.view(b, t, self.n_head, -1).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, n_head: int, mlp_ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_head, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, mlp_ratio * d_model)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(mlp_ratio * d_model, d_model)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class GPT(nn.Module):
    """A small GPT-style language model: token + position embeddings, pre-LN blocks, final LN, LM head.

    Input: token ids ``[B, T]`` with ``T <= context_length``; output: logits ``[B, T, vocab_size]``.
    """

    def __init__(self, vocab_size=256, context_length=64, n_layer=2, n_head=4, d_model=64, mlp_ratio=4,
                 dropout=0.0, tie_weights=False):
        super().__init__()
        self.context_length = context_length
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(context_length, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_head, mlp_ratio, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        if tie_weights:
            self.lm_head.weight = self.tok_emb.weight
        self.example_input_shape, self.example_input_dtype = (context_length,), "long"
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("o_proj.weight", "fc2.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx):
        t = idx.shape[1]
        if t > self.context_length:
            raise ConfigError(f"sequence length {t} exceeds context_length={self.context_length}")
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


@register_model("lstm")
def lstm(*, num_classes, in_channels, input_size, hidden_size: int = 128, num_layers: int = 1,
         vocab_size: int | None = None, embed_dim: int = 64):
    return LSTMClassifier(num_classes, in_channels, input_size, hidden_size, num_layers, vocab_size, embed_dim)


@register_model("gpt-tiny")
def gpt_tiny(*, num_classes, in_channels, input_size, vocab_size: int | None = None,
             context_length: int | None = None, n_layer: int = 2, n_head: int = 4, d_model: int = 64,
             mlp_ratio: int = 4, dropout: float = 0.0, tie_weights: bool = False):
    """``vocab_size`` defaults to ``num_classes`` (the classes of next-token prediction) and
    ``context_length`` to ``input_size`` (the sequence length), so a ``synthetic-text`` bundle's
    ``num_classes``/``input_size`` build a matching model; ``in_channels`` does not apply."""
    return GPT(vocab_size or num_classes, context_length or input_size, n_layer, n_head, d_model, mlp_ratio,
               dropout, tie_weights)
