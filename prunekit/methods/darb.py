"""Density-adaptive regular-block pruning (DARB) and block-max weight masking (BMWM).

Paper: "DARB: A Density-Adaptive Regular-Block Pruning for Deep Neural Networks", Ao Ren, Tao Zhang, Yuhao
Wang, Sheng Lin, Peiyan Dong, Yen-Kuang Chen, Yuan Xie, Yanzhi Wang. AAAI 2020. http://arxiv.org/abs/1911.08020

Irregular pruning keeps the best weights but scatters them, which makes sparse matrices slow to decode;
regular patterns decode fast but ignore that some rows of a weight matrix matter far more than others.
DARB keeps one weight per block: each row of the weight matrix is cut into contiguous blocks and only the
largest-magnitude weight of each block survives, so a row stores one small index per block and decodes in
parallel (block-max weight masking, BMWM, with one block size for the whole matrix). DARB then lets the
block size depend on the row: a row that irregular magnitude pruning would leave dense gets many small
blocks, a redundant row a few large ones. The paper's exact rule from density to block size was not
available to us; here each row receives as many blocks as weights irregular magnitude pruning would keep in
it at the same layer density (at least one), its columns are split into that many near-equal contiguous
blocks, and the layer ends at the requested sparsity exactly (or, with a set of allowed block sizes, each
row takes the allowed size nearest its wish). The network is retrained with the masks fixed afterwards.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import ConfigError
from ..masks import Pattern, install_masks_, prunable_weights, register_pattern, view2d
from ._config import MethodConfig
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["block_max_mask", "darb_blocks_per_row", "quantize_blocks", "darb_mask", "BlockMaxPattern", "DARBConfig",
           "run_darb"]


def _block_ids(blocks: torch.Tensor, cols: int) -> torch.Tensor:
    """``[rows, cols]`` block index of each column: row ``i`` is cut into ``blocks[i]`` near-equal runs."""
    return (torch.arange(cols, device=blocks.device)[None, :] * blocks[:, None]) // cols


def block_max_mask(weight2d: torch.Tensor, blocks: torch.Tensor | None = None, *,
                   sizes: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the largest-|w| entry of each block (first one on ties).

    Row ``i`` is cut into ``blocks[i]`` near-equal contiguous blocks, or, with ``sizes``, into blocks of
    exactly ``sizes[i]`` columns (the last one shorter when the size does not divide the row).

    Example:
        >>> w = torch.tensor([[0.1, -0.9, 0.3, 0.2], [0.5, 0.4, 0.1, 0.7]])
        >>> block_max_mask(w, torch.tensor([2, 1])).int().tolist()   # row 0: blocks [0:2], [2:4]; row 1: one block
        [[0, 1, 1, 0], [0, 0, 0, 1]]
        >>> block_max_mask(w, sizes=torch.tensor([3, 2])).int().tolist()   # row 0: [0:3], [3:4]
        [[0, 1, 0, 1], [1, 0, 0, 1]]
    """
    rows, cols = weight2d.shape
    if sizes is not None:
        local = torch.arange(cols, device=weight2d.device)[None, :] // sizes.to(torch.long).clamp(min=1)[:, None]
    else:
        local = _block_ids(blocks.to(torch.long).clamp(1, cols), cols)
    ids = local + torch.arange(rows, device=weight2d.device)[:, None] * cols  # unique per row
    mag = weight2d.detach().abs().float()
    best = torch.full((rows * cols,), -1.0, device=mag.device).scatter_reduce(
        0, ids.flatten(), mag.flatten(), reduce="amax")
    is_max = mag == best[ids]
    col = torch.arange(cols, device=mag.device).expand(rows, cols)
    big = torch.full_like(col, cols)
    first = torch.full((rows * cols,), cols, device=mag.device, dtype=torch.long).scatter_reduce(
        0, ids.flatten(), torch.where(is_max, col, big).flatten(), reduce="amin")
    return is_max & (col == first[ids])


def darb_blocks_per_row(weight2d: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Blocks per row: the row's kept count under layer-wise magnitude pruning at ``sparsity`` (>= 1 each),
    adjusted so the layer keeps exactly ``round((1 - sparsity) * numel)`` weights (at least one per row)."""
    rows, cols = weight2d.shape
    keep_total = max(rows, round((1.0 - sparsity) * weight2d.numel()))
    flat = weight2d.detach().abs().flatten()
    kept = torch.zeros_like(flat, dtype=torch.bool)
    kept[torch.topk(flat, keep_total, sorted=False).indices] = True
    k = kept.reshape(rows, cols).sum(1).clamp(min=1)
    excess = int(k.sum()) - keep_total  # > 0 when empty rows were raised to one block
    while excess > 0:  # take blocks from the densest rows
        i = int(torch.argmax(k))
        take = min(excess, int(k[i]) - 1)
        if take <= 0:
            break
        k[i] -= take
        excess -= take
    return k


def quantize_blocks(blocks: torch.Tensor, cols: int, block_sizes, keep_max: int) -> torch.Tensor:
    """Per-row block *sizes* chosen from ``block_sizes`` (e.g. ``(4, 8, 16)``) for ``blocks`` wished blocks.

    Each row takes the allowed size nearest (in log scale) to ``cols / blocks``; while the layer keeps more
    than ``keep_max`` weights (``ceil(cols / size)`` per row), the row kept furthest above its wish moves to
    the next larger size. At most ``keep_max`` weights are kept unless every row has the largest size.

    Example:
        >>> quantize_blocks(torch.tensor([10, 3, 1]), 32, (4, 8, 16), keep_max=14).tolist()
        [4, 8, 16]
    """
    sizes = sorted({int(b) for b in block_sizes})
    if not sizes or sizes[0] < 1:
        raise ConfigError(f"block_sizes={tuple(block_sizes)!r} must be positive integers, e.g. (4, 8, 16)")
    wish = blocks.clamp(min=1).double()
    logs = torch.log(torch.tensor(sizes, dtype=torch.float64))
    idx = (torch.log(cols / wish)[:, None] - logs[None, :]).abs().argmin(1)
    count = lambda i: -(-cols // sizes[i])
    k = torch.tensor([count(int(i)) for i in idx], dtype=torch.long)
    while int(k.sum()) > keep_max:
        over = k.double() / wish
        over[idx == len(sizes) - 1] = -1.0  # already at the largest size
        r = int(torch.argmax(over))
        if over[r] < 0:
            break
        idx[r] += 1
        k[r] = count(int(idx[r]))
    return torch.tensor([sizes[int(i)] for i in idx], dtype=torch.long)


def darb_mask(weight: torch.Tensor, sparsity: float, block_sizes=None) -> torch.Tensor:
    """DARB mask of one weight (any shape; rows of the ``[out, -1]`` view) at ``sparsity``.

    With ``block_sizes`` (e.g. ``(4, 8, 16)``) each row's block size is restricted to those values (see
    :func:`quantize_blocks`); the sparsity is then at least ``sparsity`` instead of exactly it.
    """
    w2 = view2d(weight)
    blocks = darb_blocks_per_row(w2, sparsity)
    if block_sizes:
        sizes = quantize_blocks(blocks, w2.shape[1], block_sizes, int(blocks.sum()))
        return block_max_mask(w2, sizes=sizes).reshape(weight.shape)
    return block_max_mask(w2, blocks).reshape(weight.shape)


class BlockMaxPattern(Pattern):
    """``"bmwm:B"``: block-max weight masking with block size ``B`` along each row (one weight kept per
    block of ``B`` consecutive inputs; a last, shorter block when ``B`` does not divide the row)."""

    def __init__(self, spec: str, block: int):
        self.spec, self.block = spec, block
        self.fixed_sparsity = 1.0 - 1.0 / block

    def _blocks(self, shape2d):
        rows, cols = shape2d
        return torch.full((rows,), -(-cols // self.block), dtype=torch.long)

    def select_fixed(self, scores2d: torch.Tensor) -> torch.Tensor:
        rows, cols = scores2d.shape
        ids = torch.arange(cols) // self.block  # fixed-size blocks (the last may be shorter)
        mag = scores2d.float()
        out = torch.zeros_like(mag, dtype=torch.bool)
        for b in range(int(ids.max()) + 1):
            sl = (ids == b).nonzero().flatten()
            top = mag[:, sl].argmax(dim=1)
            out[torch.arange(rows), sl[top]] = True
        return out

    def check(self, mask2d: torch.Tensor) -> bool:
        rows, cols = mask2d.shape
        pad = (-cols) % self.block
        m = torch.cat([mask2d.int(), mask2d.new_zeros(rows, pad).int()], 1)
        return bool((m.reshape(rows, -1, self.block).sum(-1) <= 1).all())


@register_pattern("bmwm", example="bmwm:4")
def _bmwm(spec, arg):
    if arg is None or not arg.isdigit() or int(arg) < 2:
        raise ConfigError(f"pattern={spec!r}: block-max masking is 'bmwm:B' with an integer block size B >= 2, "
                          "e.g. 'bmwm:8' (keeps 1 of every 8 weights)")
    return BlockMaxPattern(spec, int(arg))


@dataclass(frozen=True)
class DARBConfig(MethodConfig):
    # ours: the paper's rule for a row's block size was not available. None: each row gets as many near-equal
    # blocks as magnitude pruning keeps in it (exact layer sparsity); e.g. (4, 8, 16): allowed block sizes
    # (the entry's small-scale check), sparsity then at least the target
    block_sizes: tuple[int, ...] | None = None
    exempt: tuple[Literal["first", "last"], ...] = ()  # ours: keep the first / last layer dense

    def __post_init__(self):
        if self.block_sizes is not None and (not self.block_sizes or min(self.block_sizes) < 1):
            raise ValueError(f"options['block_sizes']={self.block_sizes!r} must be positive integers, "
                             "e.g. (4, 8, 16), or None")


@register_method("darb", config=DARBConfig, kind="unstructured", status="partial", left_out=(
    "the paper's exact rule from a row's density to its block size (and its set of sizes) was not available: "
    "each row gets as many blocks as layer-wise magnitude pruning keeps in it (ours), or with block_sizes the "
    "allowed size nearest that wish; the retraining with fixed masks is the caller's fine-tune"),
    telemetry=Telemetry(keys=("adaptive_layers", "blocks_per_row"), engaged=lambda t: t["adaptive_layers"] > 0,
                        what="block counts adapted to the rows' densities (rows of one layer with different counts)",
                        knob="every row of every layer had the same magnitude density, so DARB equals fixed-size "
                             "BMWM here: prune trained weights, or use pattern='bmwm:B'"))
def run_darb(ctx: RunContext, cfg: DARBConfig) -> MethodResult:
    """One-shot DARB masks on every prunable layer at the target sparsity (per layer); the caller's fine-tune
    retrains with the masks fixed."""
    params = prunable_weights(ctx.model, ctx.ignore, cfg.exempt)
    masks = {fqn: darb_mask(p, ctx.target_value, cfg.block_sizes) for fqn, p in params.items()}
    blocks = {fqn: m.reshape(m.shape[0], -1).sum(1) for fqn, m in masks.items()}  # kept = blocks per row
    install_masks_(ctx.model, masks, mode="hard")
    numel = sum(m.numel() for m in masks.values())
    per_row = {f: {"min": int(b.min()), "max": int(b.max())} for f, b in blocks.items()}
    return MethodResult(ctx.model, info={
        "sparsity": 1 - sum(int(m.sum()) for m in masks.values()) / numel, "blocks_per_row": per_row},
        telemetry={"adaptive_layers": sum(v["min"] != v["max"] for v in per_row.values()),
                   "blocks_per_row": per_row})
