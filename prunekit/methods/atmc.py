"""ATMC: adversarial training under a global nonzero budget and per-layer k-means quantisation.

Paper: Shupeng Gui, Haotao Wang, Haichuan Yang, Chen Yu, Zhangyang Wang, Ji Liu, "Model Compression with
Adversarial Robustness: A Unified Optimization Framework", NeurIPS 2019. https://arxiv.org/abs/1902.03538

A network that is pruned and quantised after robust training loses much of its robustness; ATMC instead puts
the compression constraints inside the robust (min-max) training problem: minimise the loss on PGD examples
subject to at most ``k`` nonzero weights over the whole network and, per layer, the nonzeros taking one of
2^b values. The solver alternates SGD steps of the weights W on PGD examples with a hard projection of W
onto its ``k`` largest magnitudes over all layers (every ``prune_interval`` batches), and handles the
discrete quantisation constraint by ADMM: a quantised copy Z and scaled duals U are tied to W by the penalty
``(rho/2) ||W - Z + U||^2``; every ``admm_interval`` batches ``Z <- Q(P_k(W + U))`` (the nonzero budget, then
k-means on each layer's kept values with zero as a fixed extra centre) and ``U <- U + W - Z``. The compressed
model is Z: W's biases with the quantised, sparse weights.

Here: PGD examples come from :mod:`prunekit.train.adversarial`, the ADMM bookkeeping is the shared
:class:`prunekit.train.constrained.ConstrainedTraining` with :class:`SparseQuantProjection` as its set, the
k-means is :func:`prunekit.quantize.kmeans`. After the method the model holds Z, hard masks hold its support,
and the returned callbacks keep the model compressed through the caller's fine-tune (each layer's cluster
assignment is frozen and a cluster's shared value is the mean of its members' full-precision weights, trained
straight through) while training on PGD examples. Left out: the low-rank ``A B + C`` factorisation branch and
the model-size (bits x nonzeros) knapsack over per-layer bit-widths; every layer uses ``bits``.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Literal

import torch

from ..masks import install_masks_
from ..quantize import bits_used, kmeans, packed_size
from ..train import fit
from ..train.adversarial import AdversarialTraining, InputSpace, robust_accuracy
from ..train.callbacks import Callback, WeightSTE
from ..train.config import method_train_config
from ..train.constrained import ConstrainedTraining, Projection
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

__all__ = ["ATMCConfig", "SparseQuantProjection", "quantize_kept", "L0Projection", "SharedCentroids", "run"]


@dataclass(frozen=True)
class ATMCConfig(MethodConfig):
    eps: float = option(4 / 255, ge=0)  # PGD L-inf radius in pixels (paper's CIFAR setting: 4/255)
    steps: int = option(3, ge=1)  # PGD iterations while training (paper's CIFAR setting: 3)
    alpha: float = option(0.0, ge=0)  # PGD step in pixels; 0 = 2.5 * eps / steps (Madry et al.; ours: not stated)
    random_start: bool = True  # PGD starts at a uniform point of the ball (Madry et al., which ATMC trains with)
    bits: int = option(8, ge=1, le=16)  # per-layer bit-width: 2^bits values incl. zero (reference --quantize_bits 8)
    quantize: bool = True  # ADMM quantisation (paper); False = pruning only (reference --quantize_algo None)
    rho: float = option(0.1, ge=0)  # ADMM penalty (reference train_proj_admm_quant.py: rho=0.1)
    admm_interval: int = option(5, ge=1)  # batches between Z/U updates (reference --quant_interval 5)
    prune_interval: int = option(1, ge=1)  # batches between l0 projections of W (reference --prune_interval 1)
    lr: float = option(1e-3, gt=0)  # SGD learning rate of the ATMC stage (reference MNIST --lr 1e-3)
    kmeans_iters: int = option(10, ge=1)  # Lloyd iterations per Z-update (reference: up to 100, tol 1e-3; ours: speed)
    clamp: Literal["data", "none"] = "data"  # ours: attacked pixels stay in [0, 1] (the loader's normalisation)
    eval_batches: int = option(2, ge=1)  # ours: batches (val, else calib, else train) for the robust telemetry


def quantize_kept(values: torch.Tensor, kept: torch.Tensor, bits: int, iters: int = 10
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, index)``: the kept entries of ``values`` replaced by the nearest of ``2^bits - 1`` centres or 0,
    the centres found by Lloyd's algorithm with zero as a fixed extra centre (seeded by the linear
    initialisation of :func:`prunekit.quantize.kmeans`), the rest zero; ``index`` is the
    centre of each entry, -1 where the entry is zero. At most ``2^bits`` distinct values (zero included).

    Example:
        >>> v = torch.tensor([0.9, 1.1, -2.0, 0.3, 0.05, 5.0])  # 5.0 is not kept; 0.05 joins the zero centre
        >>> q, i = quantize_kept(v, torch.tensor([True, True, True, True, True, False]), bits=2)
        >>> [round(x, 2) for x in q.tolist()], i.tolist()
        ([1.0, 1.0, -2.0, 0.3, 0.0, 0.0], [2, 2, 0, 1, -1, -1])
    """
    q = torch.zeros_like(values)
    index = torch.full(values.shape, -1, dtype=torch.long, device=values.device)
    kept = kept & (values != 0)
    vals = values[kept].detach()
    if vals.numel() == 0:
        return q, index
    k = min(2 ** bits - 1, vals.numel())
    centres = kmeans(vals.float(), k, init="linear", iters=1)[0].to(vals)  # the shared k-means seeds the centres
    for _ in range(iters):  # Lloyd with zero as a fixed extra centre (the reference's fixed-0-centre k-means)
        book = torch.cat([vals.new_zeros(1), centres])
        assign = (vals[:, None] - book[None, :]).abs().argmin(1)
        sums = torch.zeros_like(book).index_add_(0, assign, vals)
        counts = torch.zeros_like(book).index_add_(0, assign, torch.ones_like(vals))
        new = torch.where(counts[1:] > 0, sums[1:] / counts[1:].clamp_min(1), centres)
        if torch.equal(new, centres):
            break
        centres = new
    book = torch.cat([vals.new_zeros(1), centres])
    assign = (vals[:, None] - book[None, :]).abs().argmin(1)
    q[kept] = book[assign]
    index[kept] = assign - 1
    return q, index


@dataclass(frozen=True)
class SparseQuantProjection(Projection):
    """The ATMC set: at most ``(1 - sparsity) * n`` nonzeros over all layers (``scope="global"``, ranked by
    magnitude), each layer's nonzeros quantised to ``2^bits - 1`` k-means centres plus zero."""

    bits: int = 8  # 0: no quantisation (the l0 budget alone)
    iters: int = 10

    def __call__(self, values):
        kept = self.masks(values)
        if not self.bits:
            return {f: torch.where(kept[f], v.detach(), torch.zeros_like(v)) for f, v in values.items()}, kept
        z = {f: quantize_kept(v.detach(), kept[f], self.bits, self.iters)[0] for f, v in values.items()}
        return z, {f: q != 0 for f, q in z.items()}


class L0Projection(Callback):
    """``W <- P_k(W)`` every ``interval`` optimizer steps (ATMC's hard l0 projection, one global ranking).

    ``flips`` counts the weights whose membership of the kept set changed between two projections: weights that
    the SGD steps brought back above the cut or pushed below it (zero: the first support stayed, i.e. one-shot
    magnitude pruning)."""

    def __init__(self, weights: dict, projection: Projection, interval: int = 1):
        self.weights, self.projection, self.interval = weights, projection, interval
        self.support = None
        self.projections = self.flips = 0

    @torch.no_grad()
    def project(self) -> None:
        kept = self.projection.masks({f: w.detach() for f, w in self.weights.items()})
        for f, w in self.weights.items():
            w.mul_(kept[f].to(w.dtype))
        if self.support is not None:
            self.flips += sum(int((kept[f] != self.support[f]).sum()) for f in kept)
        self.support = kept
        self.projections += 1

    def on_after_step(self, state) -> None:
        if state.step % self.interval == 0:
            self.project()


class SharedCentroids(WeightSTE):
    """Keeps a quantised model quantised through training: each weight's cluster (``index``; -1 = zero) is
    frozen, and a cluster's shared value is the mean of its members' full-precision weights (straight-through
    update of the full-precision copies, :class:`~prunekit.train.callbacks.WeightSTE`)."""

    def __init__(self, model, index: dict[str, torch.Tensor]):
        super().__init__(model, list(index))
        self.index = index

    def quantized(self, fqn: str, full: torch.Tensor) -> torch.Tensor:
        idx = self.index[fqn]
        kept = idx >= 0
        if not kept.any():
            return torch.zeros_like(full)
        n = int(idx.max()) + 1
        sums = torch.zeros(n, dtype=full.dtype, device=full.device).index_add_(0, idx[kept], full[kept])
        counts = torch.zeros(n, dtype=full.dtype, device=full.device).index_add_(0, idx[kept],
                                                                                  torch.ones_like(full[kept]))
        q = torch.zeros_like(full)
        q[kept] = (sums / counts.clamp_min(1))[idx[kept]]
        return q


def _quant_error(weights: dict, projection: SparseQuantProjection) -> float:
    """``||P_k(W) - Q(P_k(W))|| / ||P_k(W)||``: how far the kept weights are from their quantised values."""
    kept = projection.masks({f: w.detach() for f, w in weights.items()})
    if not projection.bits:
        return 0.0
    num = den = 0.0
    for f, w in weights.items():
        v = w.detach() * kept[f]
        q = quantize_kept(v, kept[f], projection.bits, projection.iters)[0]
        num += float((v - q).pow(2).sum())
        den += float(v.pow(2).sum())
    return (num / den) ** 0.5 if den else 0.0


def _engaged(t: dict) -> bool:
    quantised = t["bits"] == 32 or (t["updates"] >= 1 and t["quant_error_after"] < t["quant_error_before"])
    return t["attacked"] > 0 and t["projections"] >= 2 and quantised


@register_method("atmc", config=ATMCConfig, kind="unstructured", needs=("train",), status="partial",
                 left_out="the low-rank A·B + C factorisation branch and the model-size knapsack over per-layer "
                          "bit-widths (every layer gets options.bits); the paper's 0.5 clean + 0.5 PGD loss mix of "
                          "the reference scripts is not offered (the W-steps train on PGD examples only)",
                 smoke={"steps": 1, "eval_batches": 1, "kmeans_iters": 2, "lr": 0.05, "admm_interval": 1},
                 telemetry=Telemetry(keys=("attacked", "projections", "flips", "updates", "gap_first", "gap_last",
                                           "quant_error_before", "quant_error_after", "nonzeros", "budget",
                                           "max_distinct", "bits", "robust_before", "robust_after"), engaged=_engaged,
                                     what="projected SGD on PGD examples under the global l0 budget while the ADMM "
                                          "penalty pulls the kept weights towards their k-means values (their "
                                          "quantisation error fell)",
                                     knob="options.eps > 0 (PGD examples), and options.rho, options.admm_interval or "
                                          "prune_epochs (the ADMM pull towards the quantised copy)"))
def run(ctx: RunContext, cfg: ATMCConfig) -> MethodResult:
    """Adversarial SGD with the global l0 projection and the ADMM quantisation step; the model ends as Z."""
    space = InputSpace.of(ctx.train_data) if cfg.clamp == "data" else None
    adv = dict(eps=cfg.eps, attack="pgd", alpha=cfg.alpha or None, steps=cfg.steps, random_start=cfg.random_start)
    probe = list(islice(ctx.val_data or ctx.calib or ctx.train_data, cfg.eval_batches))

    def robust() -> float:
        return robust_accuracy(ctx.model, probe, space=space, device=ctx.device, seed=ctx.seed, **adv)["robust"]

    before = robust()
    bits = cfg.bits if cfg.quantize else 32
    cset = SparseQuantProjection(sparsity=ctx.target_value, scope="global", bits=cfg.bits if cfg.quantize else 0,
                                 iters=cfg.kmeans_iters)  # the constraint set: l0 budget, then k-means values
    block = ConstrainedTraining(cset, rho=cfg.rho if cfg.quantize else 0.0, interval=cfg.admm_interval,
                                unit="step", max_updates=None if cfg.quantize else 0, ignore=ctx.ignore)
    block.setup(ctx.model)
    qerr_before = _quant_error(block.weights, cset)
    l0 = L0Projection(block.weights, cset, cfg.prune_interval)
    attacker = AdversarialTraining(space=space, seed=ctx.seed, **adv)
    train = method_train_config(ctx, max(1, ctx.prune_epochs)).replace(lr=cfg.lr)
    fit(ctx.model, ctx.train_data, train, callbacks=[attacker, l0, block])  # W-steps, P_k(W), Z/U updates
    l0.project()
    qerr_after = _quant_error(block.weights, cset)
    index = {}
    with torch.no_grad():  # the compressed model: Z = Q(P_k(W)) (P_k(W) alone without quantisation)
        kept = cset.masks({f: w.detach() for f, w in block.weights.items()})
        for f, w in block.weights.items():
            if cfg.quantize:
                q, index[f] = quantize_kept(w.detach(), kept[f], bits, cfg.kmeans_iters)
                w.copy_(q)
            else:
                w.mul_(kept[f].to(w.dtype))
    masks = {f: w.detach() != 0 for f, w in block.weights.items()}
    install_masks_(ctx.model, masks, mode="hard")
    used = bits_used(ctx.model)
    nonzeros = sum(int(m.sum()) for m in masks.values())
    numel = sum(m.numel() for m in masks.values())
    gaps = [h["gap"] for h in block.history[1:]] or [block.history[0]["gap"]]
    distinct = {f: used[f]["distinct"] for f in masks if f in used}
    telemetry = {"attacked": attacker.attacked, "projections": l0.projections, "flips": l0.flips,
                 "updates": block.updates, "gap_first": gaps[0], "gap_last": gaps[-1],
                 "quant_error_before": qerr_before, "quant_error_after": qerr_after, "nonzeros": nonzeros,
                 "budget": numel - round(ctx.target_value * numel), "max_distinct": max(distinct.values(), default=0),
                 "bits": bits, "robust_before": before, "robust_after": robust()}
    callbacks = ([SharedCentroids(ctx.model, index)] if cfg.quantize else []) + \
        [AdversarialTraining(space=space, seed=ctx.seed + 1, **adv)]
    info = {"sparsity": 1 - nonzeros / numel, "distinct": distinct, "gaps": gaps,
            "packed_bytes": packed_size(ctx.model),
            "layer_sparsity": {f: 1 - float(m.float().mean()) for f, m in masks.items()},
            "epochs_trained": train.epochs, "eps": cfg.eps, "pgd_steps": cfg.steps}
    return MethodResult(ctx.model, callbacks=callbacks, info=info, telemetry=telemetry)
