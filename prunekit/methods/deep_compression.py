"""Deep Compression: pruning, trained weight sharing and Huffman coding.

Paper: "Deep Compression: Compressing Deep Neural Networks with Pruning, Trained Quantization and Huffman
Coding", Song Han, Huizi Mao, William J. Dally. ICLR 2016. https://arxiv.org/abs/1510.00149

Three stages shrink a network's storage while keeping its accuracy. First, magnitude pruning with
retraining removes most connections. Second, the surviving weights of each layer are clustered with
k-means into 2^b shared values (b = 8 for convolutions, 5 for fully connected layers), the centroids
initialised evenly between the smallest and largest weight; each weight then stores only a b-bit cluster
index, and the centroids are fine-tuned with the summed gradients of the weights that share them (with a
step-size factor, see :class:`SharedWeights`). Third, the cluster indices and the gaps between the positions
of surviving weights (stored in a few bits, with filler entries when a gap is too long) are Huffman coded,
exploiting their skewed distributions. Here the encoder writes the real byte stream, and a decoder rebuilds
the weights from it.
"""
from __future__ import annotations

import heapq
import json
import struct
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..masks import get_masks
from ..quantize import Codebook, share_weights_
from ..train import fit
from ..train.callbacks import Callback
from ..train.rewind import iterative_prune
from ..train.config import method_train_config
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

__all__ = ["DeepCompressionConfig", "SharedWeights", "share_weights_", "huffman_lengths", "encode", "decode", "run"]


class SharedWeights(Callback):
    """Centroid fine-tuning: after every optimizer step each centroid moves by ``-lr_factor * lr`` times the
    gradient of the weights that share it, and the weights are rewritten from the centroids (pruned weights
    stay zero); ``lr`` is the optimizer's current learning rate.

    ``reduce="sum"`` is the paper's rule and the true gradient of the loss with respect to a centroid. Its
    size grows with the cluster (hundreds to thousands of weights per centroid in a 5-bit layer), so at the
    learning rate that suits single weights it can diverge: one of three seeds of the LeNet-5 grid, fine-tuned
    at lr 0.01 with ``lr_factor=1``, fell to chance accuracy. ``max_step`` caps one step of each centroid at
    that fraction of its layer's centroid spread (max - min); with the method's default, 0.05, the LeNet-5
    grid's three seeds end at 86.53 +- 0.07% (``prunekit bench benchmarks/recipes/weight_lenet5.yaml``) and
    the LeNet-300-100 grid is unchanged (the cap only bites on the rare huge step). ``lr_factor`` scales
    every step down instead, and ``reduce="mean"`` moves a centroid like an average one of its weights; both
    were stable but lower in trials, since they slow every centroid, not only the runaway one.
    """

    def __init__(self, codebooks: dict[str, Codebook], *, reduce: str = "sum", lr_factor: float = 1.0,
                 max_step: float | None = None):
        if reduce not in ("mean", "sum"):
            raise ConfigError(f"reduce={reduce!r} is not a centroid-gradient reduction; use 'mean' or 'sum'")
        if not (isinstance(lr_factor, (int, float)) and lr_factor > 0):
            raise ConfigError(f"lr_factor={lr_factor!r} must be a positive number (the centroid step is "
                              "lr_factor * the optimizer's lr)")
        self.books = codebooks
        self.reduce = reduce
        self.lr_factor = float(lr_factor)
        if max_step is not None and not (isinstance(max_step, (int, float)) and max_step > 0):
            raise ConfigError(f"max_step={max_step!r} must be a positive fraction of a layer's centroid spread, "
                              "or None for no cap")
        self.max_step = max_step
        self._grads: dict[str, torch.Tensor] = {}

    def centroid_grad(self, book: Codebook, grad: torch.Tensor) -> torch.Tensor:
        """Gradient of each centroid ``[k]`` from the weight gradient ``grad`` (pruned positions ignored)."""
        keep = book.index >= 0
        idx = book.index[keep]
        total = torch.zeros_like(book.centroids).index_add_(0, idx, grad[keep].float())
        if self.reduce == "sum":
            return total
        counts = torch.zeros_like(book.centroids).index_add_(0, idx, torch.ones_like(idx, dtype=total.dtype))
        return total / counts.clamp_min(1)

    def on_after_backward(self, state) -> None:
        for fqn, book in self.books.items():
            p = state.model.get_parameter(fqn)
            if p.grad is not None:
                self._grads[fqn] = self.centroid_grad(book, p.grad)

    def on_after_step(self, state) -> None:
        lr = self.lr_factor * state.optimizer.param_groups[0]["lr"]
        with torch.no_grad():
            for fqn, book in self.books.items():
                if fqn in self._grads:
                    step = lr * self._grads[fqn]
                    if self.max_step is not None:
                        cap = self.max_step * float(book.centroids.max() - book.centroids.min())
                        step = step.clamp(-cap, cap)
                    book.centroids -= step
                p = state.model.get_parameter(fqn)
                keep = book.index >= 0
                p.copy_(torch.where(keep, book.centroids[book.index.clamp_min(0)].to(p.dtype), torch.zeros_like(p)))


def huffman_lengths(counts: dict[int, int]) -> dict[int, int]:
    """Huffman code length of each symbol from its count (a lone symbol gets length 1).

    Example:
        >>> huffman_lengths({0: 5, 1: 2, 2: 1, 3: 1})
        {0: 1, 1: 2, 2: 3, 3: 3}
    """
    items = [(c, i, (s,)) for i, (s, c) in enumerate(sorted(counts.items())) if c > 0]
    if len(items) == 1:
        return {items[0][2][0]: 1}
    lengths = {s: 0 for _, _, group in items for s in group}
    heapq.heapify(items)
    tie = len(items)
    while len(items) > 1:
        c1, _, g1 = heapq.heappop(items)
        c2, _, g2 = heapq.heappop(items)
        for s in g1 + g2:
            lengths[s] += 1
        heapq.heappush(items, (c1 + c2, tie, g1 + g2))
        tie += 1
    return dict(sorted(lengths.items()))


def _canonical(lengths: dict[int, int]) -> dict[int, str]:
    code, prev, out = 0, 0, {}
    for length, sym in sorted((l, s) for s, l in lengths.items()):
        code <<= length - prev
        out[sym] = format(code, f"0{length}b")
        code, prev = code + 1, length
    return out


def _pack(symbols: list[int], lengths: dict[int, int]) -> bytes:
    codes = _canonical(lengths)
    bits = "".join(codes[s] for s in symbols)
    arr = np.frombuffer(bits.encode(), dtype=np.uint8) - 48
    return np.packbits(arr).tobytes()


def _unpack(data: bytes, lengths: dict[int, int], n: int) -> list[int]:
    table = {v: k for k, v in _canonical(lengths).items()}
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    out, cur = [], ""
    for b in bits.tolist():
        cur += "1" if b else "0"
        if cur in table:
            out.append(table[cur])
            cur = ""
            if len(out) == n:
                break
    return out


def _streams(book: Codebook, index_bits: int) -> tuple[list[int], list[int]]:
    """(gap symbols, cluster symbols) in flattened order; symbol 2^bits marks a filler entry."""
    flat = book.index.flatten()
    pos = torch.nonzero(flat >= 0).flatten().tolist()
    clusters = flat[flat >= 0].tolist()
    max_gap, filler = 2 ** index_bits - 1, 2 ** book.bits
    gaps, syms, prev = [], [], -1
    for p, c in zip(pos, clusters):
        gap = p - prev - 1
        while gap > max_gap:
            gaps.append(max_gap)
            syms.append(filler)
            gap -= max_gap + 1
        gaps.append(gap)
        syms.append(c)
        prev = p
    return gaps, syms


def _counts(symbols):
    out: dict[int, int] = {}
    for s in symbols:
        out[s] = out.get(s, 0) + 1
    return out


def _table(lengths: dict[int, int]) -> bytes:
    """Code lengths of symbols 0..max as one byte each (0 = symbol absent): enough to rebuild the codes."""
    top = max(lengths)
    return bytes(lengths.get(s, 0) for s in range(top + 1))


def _untable(data: bytes) -> dict[int, int]:
    return {s: n for s, n in enumerate(data) if n}


def encode(model: nn.Module, codebooks: dict[str, Codebook], *, index_bits_conv: int = 8, index_bits_fc: int = 5,
           huffman: bool = True) -> bytes:
    """Serialise the model: shared layers as (codebook, coded gaps and cluster indices), everything else as
    raw float32. With ``huffman`` the symbols are Huffman coded (code-length tables stored, one byte per
    symbol); otherwise fixed width. Decode with :func:`decode`."""
    header, body = {"layers": {}, "raw": {}, "huffman": huffman}, bytearray()
    for fqn, book in codebooks.items():
        index_bits = index_bits_fc if book.index.dim() == 2 else index_bits_conv
        gaps, syms = _streams(book, index_bits)
        if huffman:
            gl, sl = huffman_lengths(_counts(gaps)), huffman_lengths(_counts(syms))
            tables = _table(gl) + _table(sl)
            sizes = [len(_table(gl)), len(_table(sl))]
        else:
            gl = {s: index_bits for s in range(2 ** index_bits)}
            sl = {s: book.bits + 1 for s in range(2 ** book.bits + 1)}
            tables, sizes = b"", [index_bits, 0]
        g_bytes, s_bytes = _pack(gaps, gl), _pack(syms, sl)
        # [shape, bits, entries, offset, gap bytes, symbol bytes, table sizes (huffman) or index bits]
        header["layers"][fqn] = [list(book.index.shape), book.bits, len(gaps), len(body), len(g_bytes),
                                 len(s_bytes), sizes]
        body += struct.pack(f"<{len(book.centroids)}f", *book.centroids.tolist()) + tables + g_bytes + s_bytes
    shared = set(codebooks)
    for name, t in model.state_dict().items():
        if name in shared:
            continue
        header["raw"][name] = [list(t.shape), len(body)]
        body += t.detach().cpu().float().numpy().astype("<f4").tobytes()
    head = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<I", len(head)) + head + bytes(body)


def decode(blob: bytes) -> dict[str, torch.Tensor]:
    """The state_dict (float32) stored by :func:`encode`."""
    n = struct.unpack("<I", blob[:4])[0]
    header = json.loads(blob[4:4 + n])
    body = blob[4 + n:]
    out = {}
    for fqn, (shape, bits, entries, o, g_len, s_len, sizes) in header["layers"].items():
        k = 2 ** bits
        centroids = torch.tensor(struct.unpack(f"<{k}f", body[o:o + 4 * k]))
        o += 4 * k
        if header["huffman"]:
            gl, sl = _untable(body[o:o + sizes[0]]), _untable(body[o + sizes[0]:o + sizes[0] + sizes[1]])
            o += sizes[0] + sizes[1]
        else:
            gl = {s: sizes[0] for s in range(2 ** sizes[0])}
            sl = {s: bits + 1 for s in range(k + 1)}
        gaps = _unpack(body[o:o + g_len], gl, entries)
        syms = _unpack(body[o + g_len:o + g_len + s_len], sl, entries)
        flat = torch.zeros(int(np.prod(shape)))
        pos = -1
        for g, s in zip(gaps, syms):
            pos += g + 1
            if s != k:
                flat[pos] = centroids[s]
        out[fqn] = flat.reshape(shape)
    for name, (shape, offset) in header["raw"].items():
        count = int(np.prod(shape)) if shape else 1
        arr = np.frombuffer(body, dtype="<f4", count=count, offset=offset)
        out[name] = torch.from_numpy(arr.copy()).reshape(shape)
    return out


@dataclass(frozen=True)
class DeepCompressionConfig(MethodConfig):
    rounds: int = option(3, ge=1)  # stage 1: prune -> retrain rounds as in han-magnitude (paper sec. 2)
    retrain_epochs: int = option(1, ge=0)  # ours: retraining budget per round
    retrain_lr_factor: float = option(0.1, gt=0, le=1)  # han-magnitude: retrain at 1/10 of the original lr
    bits_conv: int = option(8, ge=1, le=16)  # stage 2: 2^bits shared values per conv layer (paper sec. 5: 8)
    bits_fc: int = option(5, ge=1, le=16)  # per fully connected layer (paper sec. 5: 5)
    centroid_epochs: int = option(1, ge=0)  # ours: centroid fine-tuning epochs inside the method
    index_bits_conv: int = option(8, ge=1, le=16)  # stage 3: relative position index width, conv (paper sec. 2: 8)
    index_bits_fc: int = option(5, ge=1, le=16)  # fully connected (paper sec. 2: 5)
    centroid_grad: Literal["sum", "mean"] = "sum"  # paper sec. 3.1: a centroid's gradient is the sum; mean is ours
    centroid_lr_factor: float = option(1.0, gt=0)  # ours: centroid step = factor * the optimizer's lr
    centroid_max_step: float | None = option(0.05, gt=0)  # ours: step cap, fraction of the spread (None: none)


@register_method("deep-compression", config=DeepCompressionConfig, kind="unstructured", needs=("train",),
                 telemetry=Telemetry(keys=("stages_done", "bits", "clusters", "compressed_bytes", "dense_bytes"),
                                     engaged=lambda t: t["compressed_bytes"] < t["dense_bytes"],
                                     what="compression (pruning + weight sharing + Huffman coding to fewer bytes)",
                                     knob="raise the target sparsity or lower options.bits_fc / options.bits_conv: "
                                          "the coded model is not smaller than the dense float32 one"))
def run(ctx: RunContext, cfg: DeepCompressionConfig) -> MethodResult:
    """Prune → share weights (k-means) → fine-tune centroids → Huffman-code; reports real byte sizes.

    The returned callback keeps the weights shared while the caller fine-tunes (centroid training)."""
    dense_bytes = sum(t.numel() * 4 for t in ctx.model.state_dict().values())
    base = method_train_config(ctx, max(1, cfg.retrain_epochs))
    train = base.replace(lr=base.lr * cfg.retrain_lr_factor)
    history = iterative_prune(ctx.model, ctx.train_data if cfg.retrain_epochs else None, train,  # stage 1
                              sparsity=ctx.target_value, rounds=cfg.rounds, threshold="std", retrain_last=True,
                              ignore=tuple(ctx.ignore))
    books = share_weights_(ctx.model, bits_conv=cfg.bits_conv, bits_fc=cfg.bits_fc, fqns=list(get_masks(ctx.model)))
    callback = SharedWeights(books, reduce=cfg.centroid_grad, lr_factor=cfg.centroid_lr_factor,
                             max_step=cfg.centroid_max_step)
    centroid_steps = 0
    if cfg.centroid_epochs:
        centroid_steps = fit(ctx.model, ctx.train_data, train.replace(epochs=cfg.centroid_epochs),
                             callbacks=[callback]).steps
    kw = {"index_bits_conv": cfg.index_bits_conv, "index_bits_fc": cfg.index_bits_fc}
    huff = len(encode(ctx.model, books, **kw))
    fixed = len(encode(ctx.model, books, huffman=False, **kw))
    stages = ["prune", "share"] + (["centroids"] if centroid_steps else []) + ["huffman"]
    telemetry = {"stages_done": stages, "bits": {f: b.bits for f, b in books.items()},
                 "clusters": {f: int(torch.unique(b.index[b.index >= 0]).numel()) for f, b in books.items()},
                 "compressed_bytes": huff, "dense_bytes": dense_bytes}
    info = {"rounds": history, "sparsity": history[-1]["sparsity"], "dense_bytes": dense_bytes,
            "compressed_bytes": huff, "fixed_width_bytes": fixed, "ratio": dense_bytes / huff}
    return MethodResult(ctx.model, callbacks=[callback], info=info, telemetry=telemetry)
