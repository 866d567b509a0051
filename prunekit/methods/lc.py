"""Learning-compression (LC) pruning (Carreira-Perpinan & Idelbayev).

Paper: "'Learning-Compression' Algorithms for Neural Net Pruning", Miguel A. Carreira-Perpinan, Yerlan
Idelbayev. CVPR 2018. http://faculty.ucmerced.edu/mcarreira-perpinan/papers/cvpr18.pdf

Pruning is the constrained problem min L(w) s.t. ||w||_0 <= kappa over all the weights of the net at once,
solved by an augmented Lagrangian with a compressed copy theta. The algorithm alternates a learning step and
a compression step while the penalty parameter mu grows along a geometric schedule mu_k = mu_0 * a^k. The
L step trains the net on L(w) + (mu/2) ||w - theta - lambda/mu||^2 (ordinary SGD with a quadratic pull);
the C step is data-free and exact: the projection of w - lambda/mu onto the l0 ball, i.e. keep its kappa
largest magnitudes over the whole net and zero the rest; then the multipliers move, lambda <- lambda -
mu (w - theta). Because the C step re-ranks all weights every iteration, the kept set and the per-layer
sparsities are learned from the single kappa. As mu grows, w and theta meet; the result is theta, the
pruned net, without a retraining stage (the paper's claim; the caller's fine-tune is measured apart). The
first C step runs on the reference net (the "direct compression", lambda = 0). Here the L steps share
``prune_epochs`` equally and the block is :class:`prunekit.train.constrained.ConstrainedTraining` (its
scaled duals U = -lambda/mu, rescaled when mu grows, are LC's multipliers).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..masks import install_masks_
from ..train import fit
from ..train.constrained import ConstrainedTraining, Projection
from ..train.config import method_train_config
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

__all__ = ["LCConfig", "mu_schedule", "run"]


@dataclass(frozen=True)
class LCConfig(MethodConfig):
    iterations: int = option(40, ge=1)  # LC steps (authors' LC toolkit, LeNet-300 pruning example: 40); L steps share prune_epochs
    mu0: float = option(9e-5, gt=0)  # mu_0 (authors' LC toolkit example: mu_k = 9e-5 * 1.1^k)
    mu_factor: float = option(1.1, ge=1)  # a, the geometric growth of mu per LC step (same source)
    allocation: Literal["global", "uniform"] = "global"  # paper: one l0 ball over all weights; uniform = per layer (ours)
    lr: float | None = option(0.1, gt=0)  # L-step SGD learning rate, constant (LC toolkit example: lr_base 0.1); None = ctx.train_config's
    exempt: tuple[str, ...] = ()  # ours: ("first",) / ("last",) keep those layers dense


def mu_schedule(mu0: float, factor: float, iterations: int) -> list[float]:
    """The penalty of each L step: ``mu_k = mu0 * factor**k`` for k = 0..iterations-1.

    Example:
        >>> [round(m, 6) for m in mu_schedule(1e-3, 2.0, 3)]
        [0.001, 0.002, 0.004]
    """
    return [mu0 * factor ** k for k in range(iterations)]


def _engaged(t: dict) -> bool:
    return t["updates"] >= 2 and t["gap_last"] < t["gap_first"]


@register_method("lc", config=LCConfig, kind="unstructured", needs=("train",), smoke={"iterations": 2},
                 status="partial", left_out=(
    "only the l0-constraint form (one kappa over all weights, the form the fair protocol's sparsity target "
    "names) is implemented; the paper's l0-penalty (hard threshold), l1-penalty (soft threshold) and "
    "l1-constraint (l1-ball projection) C steps are not"),
                 telemetry=Telemetry(keys=("updates", "gap_first", "gap_last", "flips", "mu_final"), engaged=_engaged,
                                     what="L/C alternation bringing w and its compressed copy theta together "
                                          "(||w - theta|| fell over the LC steps)",
                                     knob="raise options.iterations, options.mu0 / mu_factor or prune_epochs (one "
                                          "LC step is plain magnitude pruning)"))
def run(ctx: RunContext, cfg: LCConfig) -> MethodResult:
    """Direct compression, then ``iterations`` x (L step, C step, multiplier step, mu *= a); ends with w = theta."""
    projection = Projection(sparsity=ctx.target_value, scope="global" if cfg.allocation == "global" else "layer")
    train = method_train_config(ctx, max(1, ctx.prune_epochs))
    if cfg.lr is not None:
        train = train.replace(lr=cfg.lr, scheduler="constant", warmup_steps=0)
    total = train.epochs * len(ctx.train_data)
    block = ConstrainedTraining(projection, rho=cfg.mu0, rho_factor=cfg.mu_factor,
                                interval=max(1, total // cfg.iterations), unit="step", max_updates=cfg.iterations,
                                ignore=ctx.ignore, exempt=cfg.exempt)
    block.setup(ctx.model)
    fit(ctx.model, ctx.train_data, train, callbacks=[block])
    with torch.no_grad():  # w = theta: the compressed net is the last C step's result
        for k, w in block.weights.items():
            w.copy_(block.Z[k])
    install_masks_(ctx.model, block.masks, mode="hard")
    kept = sum(int(m.sum()) for m in block.masks.values())
    numel = sum(m.numel() for m in block.masks.values())
    gaps = [h["gap"] for h in block.history]
    mus = [h["rho"] for h in block.history[1:]]
    telemetry = {"updates": block.updates, "gap_first": gaps[0], "gap_last": gaps[-1], "flips": block.flips,
                 "mu_final": mus[-1] if mus else cfg.mu0}
    layers = {k: 1 - float(m.float().mean()) for k, m in block.masks.items()}
    return MethodResult(ctx.model, info={"sparsity": 1 - kept / numel, "layer_sparsity": layers, "gaps": gaps,
                                         "mus": mus, "history": block.history, "epochs_trained": train.epochs},
                        telemetry=telemetry)
