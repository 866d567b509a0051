"""Tiny canonical models and equivalence checks shared by users and prunekit's own tests.

``models()`` maps a name to a factory returning ``(model, example_inputs)``; ``assert_equivalent``
compares two models' outputs; ``zero_removed_`` zeroes every coupled slice a plan removes, giving the
masked twin a physically pruned model must match.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from ..graph.trace import _walk_outputs, call_model

__all__ = ["models", "assert_equivalent", "zero_removed_", "output_tensors"]


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.b = nn.Conv2d(6, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = x + self.b(F.relu(self.bn(self.a(x))))
        x = x * torch.sigmoid(self.c(x))  # residual mul
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 1)
        self.c = nn.Conv2d(10, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], 1)
        y = F.max_pool2d(F.relu(self.c(y)), 2)
        return self.fc(y.sum((2, 3)))


class Split(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(4, 6, 3, padding=1)
        self.c = nn.Conv2d(10, 6, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        y1, y2 = self.a(x).chunk(2, dim=1)
        y = torch.cat([y1, F.relu(self.b(y2)), ], 1)
        return self.fc(self.c(y).mean((2, 3)))


class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.pw1 = nn.Conv2d(3, 8, 1)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 16, 3, padding=1, groups=8)  # depth multiplier 2
        self.bn2 = nn.BatchNorm2d(16)
        self.pw2 = nn.Conv2d(16, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu6(self.bn1(self.pw1(x)))
        x = F.hardswish(self.bn2(self.dw(x)))
        return self.fc(self.pw2(x).mean((2, 3)))


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.g = nn.Conv2d(8, 12, 3, padding=1, groups=2)
        self.gn = nn.GroupNorm(4, 12)
        self.b = nn.Conv2d(12, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = F.relu(self.gn(self.g(F.relu(self.a(x)))))
        return self.fc(self.b(x).mean((2, 3)))


class FlattenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc1 = nn.Linear(6 * 4 * 4, 10)
        self.fc2 = nn.Linear(10, 3)

    def forward(self, x):
        x = F.relu(self.conv(x))
        x = F.max_pool2d(x, 2).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


class Attention(nn.Module):
    """Hand-written attention with separate q/k/v/o projections; ``kv_heads < heads`` gives GQA."""

    def __init__(self, dim=16, heads=4, kv_heads=4, head_dim=4, fused=False, sdpa=True):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim, self.fused, self.sdpa = heads, kv_heads, head_dim, fused, sdpa
        self.embed = nn.Linear(6, dim)
        if fused:
            self.qkv = nn.Linear(dim, 3 * heads * head_dim)
        else:
            self.q = nn.Linear(dim, heads * head_dim)
            self.k = nn.Linear(dim, kv_heads * head_dim)
            self.v = nn.Linear(dim, kv_heads * head_dim)
        self.o = nn.Linear(heads * head_dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 24)
        self.down = nn.Linear(24, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        B, T, _ = x.shape
        h = self.embed(x)
        if self.fused:
            q, k, v = self.qkv(h).chunk(3, dim=-1)
        else:
            q, k, v = self.q(h), self.k(h), self.v(h)
        q = q.view(B, T, -1, self.head_dim).transpose(1, 2)
        k = k.view(B, T, -1, self.head_dim).transpose(1, 2)
        v = v.view(B, T, -1, self.head_dim).transpose(1, 2)
        if self.sdpa:
            a = F.scaled_dot_product_attention(q, k, v, enable_gqa=self.heads != self.kv_heads)
        else:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
            w = (q @ k.transpose(-1, -2)) * self.head_dim ** -0.5
            a = w.softmax(-1) @ v
        a = a.transpose(1, 2).reshape(B, T, -1)
        h = h + self.o(a)
        h = h + self.down(F.gelu(self.up(h)))
        return self.head(h.mean(1))


class MHA(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.mha = nn.MultiheadAttention(16, 4, batch_first=True)
        self.up = nn.Linear(16, 20)
        self.down = nn.Linear(20, 3)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.mha(h, h, h, need_weights=False)[0]
        return self.down(F.relu(self.up(h))).mean(1)


class RNN(nn.Module):
    def __init__(self, kind="lstm"):
        super().__init__()
        cls = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = cls(6, 10, batch_first=True)
        self.fc = nn.Linear(10, 3)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.fc(y[:, -1])


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 12)
        self.mlp1 = nn.Linear(12, 16)
        self.mlp2 = nn.Linear(16, 12)
        self.lm_head = nn.Linear(12, 20, bias=False)
        self.lm_head.weight = self.emb.weight

    def forward(self, ids):
        h = self.emb(ids)
        h = h + self.mlp2(F.silu(self.mlp1(h)))
        return self.lm_head(h)


class Reuse(nn.Module):
    """One conv called twice, and an SPPF-style max-pool reused three times."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(3, 1, 1)
        self.b = nn.Conv2d(32, 6, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        x = F.relu(self.a(x))
        x = F.relu(self.shared(F.relu(self.shared(x))))
        y1 = self.pool(x)
        y2 = self.pool(y1)
        y3 = self.pool(y2)
        return self.fc(self.b(torch.cat([x, y1, y2, y3], 1)).mean((2, 3)))


class TokenModel(nn.Module):
    """Bare parameters used functionally: class token, position embedding, layer scale."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 12, 2, stride=2)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 12))
        self.pos_embed = nn.Parameter(torch.randn(1, 5, 12))
        self.fc1 = nn.Linear(12, 20)
        self.fc2 = nn.Linear(20, 12)
        self.gamma = nn.Parameter(torch.rand(12))
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), t], 1) + self.pos_embed
        t = t + self.gamma * self.fc2(F.gelu(self.fc1(t)))
        return self.head(t[:, 0])


class SE(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.se1 = nn.Conv2d(8, 4, 1)
        self.se2 = nn.Conv2d(4, 8, 1)
        self.out = nn.Conv2d(8, 5, 1)
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        x = F.relu(self.conv(x))
        s = torch.sigmoid(self.se2(F.relu(self.se1(x.mean((2, 3), keepdim=True)))))
        return self.fc(self.out(x * s).mean((2, 3)))


class PixelShuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        x = F.pixel_shuffle(F.relu(self.a(x)), 2)
        return self.fc(self.b(x).mean((2, 3)))


class Transposed(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.dwup = nn.ConvTranspose2d(6, 6, 2, stride=2, groups=6)
        self.b = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.b(F.relu(self.dwup(F.relu(self.up(F.relu(self.a(x)))))))


class Inplace(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.prelu = nn.PReLU(8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        y = self.a(x)
        y.relu_()
        z = self.b(y)
        z += y
        z.mul_(2.0)
        return self.fc(self.prelu(z).mean((2, 3)))


def _img(n=2, c=3, s=8):
    return torch.randn(n, c, s, s)


def models() -> dict:
    """Name -> factory returning ``(model, example_inputs)``; every model is small and float32."""
    return {
        "chain": lambda: (Chain(), _img()),
        "residual": lambda: (Residual(), _img()),
        "concat": lambda: (Concat(), _img()),
        "split": lambda: (Split(), _img()),
        "depthwise": lambda: (Depthwise(), _img()),
        "grouped": lambda: (Grouped(), _img()),
        "flatten_linear": lambda: (FlattenLinear(), _img(s=8)),
        "attention": lambda: (Attention(), torch.randn(2, 5, 6)),
        "attention_gqa": lambda: (Attention(heads=4, kv_heads=2), torch.randn(2, 5, 6)),
        "attention_gqa_eager": lambda: (Attention(heads=4, kv_heads=2, sdpa=False), torch.randn(2, 5, 6)),
        "attention_fused_qkv": lambda: (Attention(fused=True), torch.randn(2, 5, 6)),
        "mha": lambda: (MHA(), torch.randn(2, 5, 6)),
        "lstm": lambda: (RNN("lstm"), torch.randn(2, 5, 6)),
        "gru": lambda: (RNN("gru"), torch.randn(2, 5, 6)),
        "tied": lambda: (Tied(), torch.randint(0, 20, (2, 7))),
        "reuse": lambda: (Reuse(), _img()),
        "tokens": lambda: (TokenModel(), _img(s=4)),
        "se": lambda: (SE(), _img()),
        "pixel_shuffle": lambda: (PixelShuffle(), _img()),
        "transposed": lambda: (Transposed(), _img()),
        "inplace": lambda: (Inplace(), _img()),
    }


def output_tensors(out) -> list:
    res = []
    _walk_outputs(out, res.append)
    return res


def assert_equivalent(model, pruned, inputs, *, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Assert both models give the same outputs on ``inputs`` (eval mode, no grad)."""
    states = [(m, m.training) for m in (model, pruned)]
    try:
        model.eval()
        pruned.eval()
        with torch.no_grad():
            a = output_tensors(call_model(model, inputs))
            b = output_tensors(call_model(pruned, inputs))
    finally:
        for m, t in states:
            m.train(t)
    assert len(a) == len(b), f"{len(a)} outputs vs {len(b)}"
    for x, y in zip(a, b):
        torch.testing.assert_close(y, x, atol=atol, rtol=rtol)


@torch.no_grad()
def zero_removed_(model, plan) -> None:
    """Zero, in ``model``, every parameter slice ``plan`` removes (the masked twin of the pruned model)."""
    params = dict(model.named_parameters())
    for g in plan.groups:
        for m in g["members"] if isinstance(g, dict) else g.members:
            if m["fqn"] in params and m["indices"]:
                params[m["fqn"]].index_fill_(m["dim"], torch.tensor(m["indices"]), 0.0)
