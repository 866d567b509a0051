"""Adversarial ADMM pruning (Ye et al.): concurrent adversarial training and weight pruning.

Paper: "Adversarial Robustness vs. Model Compression, or Both?", Shaokai Ye, Kaidi Xu, Sijia Liu, Hao Cheng,
Jan-Henrik Lambrechts, Huan Zhang, Aojun Zhou, Kaisheng Ma, Yanzhi Wang, Xue Lin. ICCV 2019.
https://arxiv.org/abs/1903.12561

The robust training problem of Madry et al. (minimise the loss on the worst PGD example inside an L-inf ball)
is solved under a per-layer sparsity constraint W_l in S_l with ADMM: a copy Z_l in S_l and scaled duals U_l
are tied to the weights by (rho/2) ||W_l - Z_l + U_l||^2. Every W-step is SGD on the adversarial loss (each
batch replaced by its PGD version) plus that term; every Z-step projects W + U onto S_l (keep the largest
entries, or the largest-norm filters); U accumulates W - Z, and rho grows after each update. After the ADMM
stage the weights are hard-pruned to Z's support and the survivors are retrained adversarially with the
pruned weights held at zero (here: the caller's fine-tune with the installed hard masks and the returned
adversarial-training callback). The constrained-training block is
:class:`prunekit.train.constrained.ConstrainedTraining`; the attacks are :mod:`prunekit.train.adversarial`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from typing import Literal

from ..masks import install_masks_
from ..train import fit
from ..train.adversarial import AdversarialTraining, InputSpace, robust_accuracy
from ..train.config import method_train_config
from ..train.constrained import ConstrainedTraining, Projection
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

__all__ = ["AdvADMMConfig", "run"]


@dataclass(frozen=True)
class AdvADMMConfig(MethodConfig):
    eps: float = option(0.3, ge=0)  # PGD L-inf radius in pixel units (paper, MNIST: 0.3)
    steps: int = option(40, ge=1)  # PGD iterations (paper, MNIST: 40)
    alpha: float = option(0.01, gt=0)  # PGD step in pixel units (paper, MNIST: 0.01)
    random_start: bool = True  # PGD starts at a uniform point of the ball (paper, after Madry et al.)
    iterations: int = option(10, ge=1)  # Z/U updates; the W-steps share prune_epochs equally (ref. MNIST: 40 ADMM epochs, admm_epoch 4)
    rho: float = option(1e-3, ge=0)  # initial penalty (reference MNIST config: 1e-3)
    rho_factor: float = option(1.3, ge=1)  # rho grows after each update (reference multi_rho scheduler: 1.3 for rho 1e-3)
    rho_max: float = option(1.0, gt=0)  # cap of the growing rho (reference scheduler grows rho up to 1)
    lr: float = option(0.01, gt=0)  # ADMM-stage learning rate (reference MNIST config: 0.01); the protocol's optimiser
    pattern: Literal["element", "row"] = "element"  # paper: irregular (element) or filter (row) sparsity; column left out
    per_layer: dict = field(default_factory=dict)  # {layer: sparsity}: the paper's hand-set ratios (LeNet: 0.8/0.947/0.99/0.93)
    clamp: Literal["data", "none"] = "data"  # attacked pixels stay in [0, 1] (read from the loader's normalisation)
    eval_batches: int = option(2, ge=1)  # ours: batches (val, else calib, else train) for the robust-accuracy telemetry
    exempt: tuple[str, ...] = ()  # ours: ("first",) / ("last",) keep those layers dense


def _engaged(t: dict) -> bool:
    return t["attacked"] > 0 and t["rho_final"] > 0 and t["updates"] >= 2 and t["gap_last"] < t["gap_first"]


@register_method("adv-admm", config=AdvADMMConfig, kind="unstructured", needs=("train",), status="partial",
                 left_out="column sparsity (element and filter/row are built); the adversarial pre-training stage "
                          "is the caller's (pass an adversarially trained model); filter sparsity is masked, not "
                          "removed by surgery; the fair-protocol bench rows (3 seeds) are not run yet",
                 smoke={"iterations": 2, "steps": 2, "eval_batches": 1},
                 telemetry=Telemetry(keys=("attacked", "updates", "gap_first", "gap_last", "rho_final",
                                           "robust_before", "robust_after"), engaged=_engaged,
                                     what="W-steps on PGD examples while the ADMM penalty pulls W towards its sparse "
                                          "projection Z (||W - Z|| fell over the iterations)",
                                     knob="options.eps > 0 (PGD examples) and options.rho, options.iterations or "
                                          "prune_epochs (the ADMM pull)"))
def run(ctx: RunContext, cfg: AdvADMMConfig) -> MethodResult:
    """ADMM stage on PGD examples, hard prune to Z's support; the caller retrains adversarially with the masks."""
    space = InputSpace.of(ctx.train_data) if cfg.clamp == "data" else None
    adv = dict(eps=cfg.eps, attack="pgd", alpha=cfg.alpha, steps=cfg.steps, random_start=cfg.random_start)
    probe = list(islice(ctx.val_data or ctx.calib or ctx.train_data, cfg.eval_batches))

    def robust() -> float:
        return robust_accuracy(ctx.model, probe, space=space, device=ctx.device, seed=ctx.seed, **adv)["robust"]

    before = robust()
    projection = Projection(sparsity=ctx.target_value, pattern=cfg.pattern, per_layer=dict(cfg.per_layer))
    train = method_train_config(ctx, max(1, ctx.prune_epochs)).replace(lr=cfg.lr)
    total = train.epochs * len(ctx.train_data)
    block = ConstrainedTraining(projection, rho=cfg.rho, rho_factor=cfg.rho_factor, rho_max=max(cfg.rho_max, cfg.rho),
                                interval=max(1, total // cfg.iterations), unit="step", max_updates=cfg.iterations,
                                ignore=ctx.ignore, exempt=cfg.exempt)
    block.setup(ctx.model)
    attacker = AdversarialTraining(space=space, seed=ctx.seed, **adv)
    fit(ctx.model, ctx.train_data, train, callbacks=[attacker, block])  # W-steps on PGD batches + the penalty
    masks = projection.masks({k: w.detach() for k, w in block.weights.items()})  # hard prune to the ratios
    install_masks_(ctx.model, masks, mode="hard")
    kept, numel = sum(int(m.sum()) for m in masks.values()), sum(m.numel() for m in masks.values())
    gaps = [h["gap"] for h in block.history]
    telemetry = {"attacked": attacker.attacked, "updates": block.updates, "gap_first": gaps[0], "gap_last": gaps[-1],
                 "rho_final": block.rho, "robust_before": before, "robust_after": robust()}
    retrain = AdversarialTraining(space=space, seed=ctx.seed + 1, **adv)  # masked adversarial retraining
    return MethodResult(ctx.model, callbacks=[retrain],
                        info={"sparsity": 1 - kept / numel, "gaps": gaps, "history": block.history,
                              "layer_sparsity": {k: 1 - float(m.float().mean()) for k, m in masks.items()},
                              "epochs_trained": train.epochs, "eps": cfg.eps, "pgd_steps": cfg.steps},
                        telemetry=telemetry)
