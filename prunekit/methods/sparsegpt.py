"""SparseGPT: one-shot pruning with approximate OBS reconstruction.

Paper: "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot", Elias Frantar, Dan
Alistarh. ICML 2023. https://arxiv.org/abs/2301.00774

Each Linear layer is pruned so that its outputs on the calibration inputs X change least: for a pruning mask
the best remaining weights solve a least-squares problem whose Hessian is H = X X^T, the same for every
output row. SparseGPT approximates the row-wise solutions by visiting the columns (inputs) left to right:
when column j is pruned or kept, the error it leaves is spread over the columns not visited yet with the
Optimal Brain Surgeon update, using the inverse Hessian of those remaining columns. All these nested
inverses are rows of one Cholesky factor of the (damped) H^-1, so one factorisation serves the whole layer.
Updates are applied lazily: within a block of B = 128 columns they touch only the block, and the block's
accumulated errors update the rest of the matrix in one matrix product. The mask is chosen adaptively, per
block of Bs = 128 columns, from the OBS saliency w^2 / [H^-1]_jj^2 of the already updated weights (for N:M,
per group of M columns within each row). H is damped by 1% of its mean diagonal; inputs that were never
active (H_jj = 0) get H_jj = 1 and their weights are zeroed, as in the reference code. Blocks are pruned in
order, each calibrated on the outputs of the blocks already pruned (:mod:`prunekit.criteria.sequential`); the
embeddings and the LM head stay dense, as in the paper. The paper calibrates on 128 segments of 2048 tokens
of C4; here the calibration set is whatever ``ctx.calib`` holds (``prunekit run --calib-batches N``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..criteria.sequential import linear_weight, sequential_calibrate
from ..errors import ConfigError
from ..masks.patterns import NMPattern
from ._config import MethodConfig, option
from ._llm import keep_mask, layer_sparsity_telemetry, llm_layers, resolve_pattern
from ._registry import MethodResult, RunContext, Telemetry, register_method
from .wanda import wanda_scores

__all__ = ["SparseGPTConfig", "sparsegpt_prune", "relative_error", "reconstruction_errors", "run"]


@dataclass(frozen=True)
class SparseGPTConfig(MethodConfig):
    damp: float = option(0.01, gt=0)  # lambda = damp * mean(diag H) added to H (paper and reference code: 1%)
    blocksize: int = option(128, ge=1)  # lazy batch updates B and adaptive mask blocks Bs (paper: B = Bs = 128)
    pattern: str = "element"  # single weights, or N:M along the inputs ("2:4", "4:8": the paper's semi-structured runs)


def _inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor U of (H + lambda I)^-1 (U^T U = H^-1): row j holds the OBS update of column j
    over the columns j.. (the inverse Hessians of the shrinking column sets, as the paper derives)."""
    lam = damp * float(h.diagonal().mean())
    hd = h + lam * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    low = torch.linalg.cholesky(hd)
    return torch.linalg.cholesky(torch.cholesky_inverse(low), upper=True)


def sparsegpt_prune(weight: torch.Tensor, h: torch.Tensor, sparsity: float, pattern: NMPattern | None = None, *,
                    blocksize: int = 128, damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Prune a ``[out, in]`` weight with SparseGPT against the layer-input Gram matrix ``h`` (``X^T X``).

    Returns ``(new_weight, keep, dead)``: the updated float32 weight (pruned entries exactly 0), the boolean
    keep-mask and the number of dead inputs (``H_jj = 0``). Nothing is modified in place.
    """
    w = weight.detach().float().clone(memory_format=torch.contiguous_format)
    h = h.detach().float().clone()
    rows, cols = w.shape
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0  # a dead input carries no information: its weights go, its H entry is made regular
    w[:, dead] = 0.0
    u = _inverse_cholesky(h, damp)
    keep = torch.ones_like(w, dtype=torch.bool)
    m = pattern.m if pattern is not None else 0
    if pattern is not None and blocksize % m:
        raise ConfigError(f"options.blocksize={blocksize} must be a multiple of M={m} of options.pattern="
                          f"{pattern.spec!r}: N:M groups may not straddle two blocks; use blocksize=128")
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1, u1 = w[:, i1:i2].clone(), u[i1:i2, i1:i2]
        q1, err1 = torch.zeros_like(w1), torch.zeros_like(w1)
        d1 = u1.diagonal()
        keep1 = torch.ones_like(w1, dtype=torch.bool)
        if pattern is None:  # adaptive mask selection over the block (Bs = blocksize columns)
            keep1 = keep_mask(w1.pow(2) / d1.pow(2).reshape(1, -1), sparsity, None, "layer")
        for j in range(i2 - i1):
            if pattern is not None and j % m == 0:  # N:M: choose the group of M from the updated weights
                g = w1[:, j:j + m].pow(2) / d1[j:j + m].pow(2).reshape(1, -1)
                keep1[:, j:j + m] = pattern.select_fixed(g)
            col = w1[:, j]
            q = col * keep1[:, j]
            q1[:, j] = q
            e = (col - q) / d1[j]
            w1[:, j:] -= e.unsqueeze(1) * u1[j, j:].unsqueeze(0)  # OBS update of the block's remaining columns
            err1[:, j] = e
        w[:, i1:i2] = q1
        keep[:, i1:i2] = keep1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]  # the lazy batched update of every later column
    keep &= ~dead.reshape(1, -1)
    return w * keep, keep, int(dead.sum())


def relative_error(weight: torch.Tensor, new_weight: torch.Tensor, h: torch.Tensor) -> float:
    """``||W X - W' X||_F^2 / ||W X||_F^2`` from the Gram matrix ``h = X^T X`` (rows of X = tokens).

    Example:
        >>> relative_error(torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 0.0]]), torch.eye(2))
        0.5
    """
    w = weight.detach().float()
    d = w - new_weight.detach().float()
    hf = h.float()
    num = float(((d @ hf) * d).sum())
    den = float(((w @ hf) * w).sum())
    return num / den if den > 0 else 0.0


def reconstruction_errors(weight: torch.Tensor, x: torch.Tensor, sparsity: float, pattern: NMPattern | None = None,
                          *, blocksize: int = 128, damp: float = 0.01, magnitude_scope: str = "layer") -> dict:
    """The relative reconstruction error ``||WX - W'X||^2 / ||WX||^2`` of magnitude, Wanda and SparseGPT
    pruning one layer ``weight [out, in]`` on the same inputs ``x [tokens, in]`` (the figure the SparseGPT
    paper compares; used by the tests and ``benchmarks/llm_oneshot.py``)."""
    x = x.detach().reshape(-1, x.shape[-1]).float()
    h = x.T @ x
    w = weight.detach().float()
    mag = w * keep_mask(w.abs(), sparsity, pattern, magnitude_scope)
    wan = w * keep_mask(wanda_scores(w, h.diagonal().sqrt()), sparsity, pattern, "row")
    sgpt, _, _ = sparsegpt_prune(w, h, sparsity, pattern, blocksize=blocksize, damp=damp)
    return {"magnitude": relative_error(w, mag, h), "wanda": relative_error(w, wan, h),
            "sparsegpt": relative_error(w, sgpt, h)}


def _engaged(t: dict) -> bool:
    return t["sparsity"] > 0 and t["rel_error"] < 0.99 * t["rel_error_zeroed"]


@register_method("sparsegpt", config=SparseGPTConfig, kind="unstructured", needs=("calib",), status="partial",
                 left_out="the paper's joint sparsification and quantization (the OBS update also absorbing the "
                          "rounding error of the kept weights) is not built: pruning only",
                 telemetry=Telemetry(keys=("sparsity", "rel_error", "rel_error_zeroed", "dead_inputs"), engaged=_engaged,
                                     what="the OBS updates of the kept weights lowering the layers' reconstruction "
                                          "error by 1% or more below zeroing the same weights",
                                     knob="the update acts through correlated layer inputs: pass calibration batches "
                                          "of real text (calib, prunekit run --calib-batches N) and keep "
                                          "options.damp small (paper: 0.01)"))
def run(ctx: RunContext, cfg: SparseGPTConfig) -> MethodResult:
    """Block by block: H = X^T X on the pruned blocks' outputs, then SparseGPT on each Linear layer."""
    pattern, sparsity = resolve_pattern(ctx, cfg.pattern, "sparsegpt")
    if pattern is not None and cfg.blocksize % pattern.m:
        raise ConfigError(f"options.blocksize={cfg.blocksize} must be a multiple of M={pattern.m} of options.pattern="
                          f"{cfg.pattern!r}: N:M groups may not straddle two blocks; use blocksize=128")
    layers = llm_layers(ctx.model, ctx.ignore, pattern, "sparsegpt")
    masks, errors, zeroed, dead = {}, {}, {}, 0

    def prune_block(i, name, stats):
        nonlocal dead
        for fqn, s in stats.items():
            w = linear_weight(layers[f"{fqn}.weight"])
            new, keep, nd = sparsegpt_prune(w, s.gram, sparsity, pattern, blocksize=cfg.blocksize, damp=cfg.damp)
            errors[fqn] = relative_error(w, new, s.gram)
            zeroed[fqn] = relative_error(w, w.detach().float() * keep, s.gram)
            dead += nd
            with torch.no_grad():
                w.copy_(new.to(w.dtype))
            masks[f"{fqn}.weight"] = keep

    rep = sequential_calibrate(ctx.model, ctx.calib, prune_block, gram=True,
                               layers=lambda f: f"{f}.weight" in layers)
    n = max(len(errors), 1)
    tel = {**layer_sparsity_telemetry(masks), "layer_rel_error": {f: round(e, 6) for f, e in errors.items()},
           "rel_error": sum(errors.values()) / n, "rel_error_zeroed": sum(zeroed.values()) / n, "dead_inputs": dead}
    return MethodResult(ctx.model, info={"sparsity": tel["sparsity"], "pattern": cfg.pattern, "blocks": rep.blocks,
                                         "calib_batches": rep.batches,
                                         "block_seconds": [round(s, 4) for s in rep.seconds],
                                         "block_cpu_seconds": [round(s, 4) for s in rep.cpu_seconds]}, telemetry=tel)
