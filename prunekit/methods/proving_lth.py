"""Strong-ticket search on frozen random weights, the feature closest to "Proving the Lottery Ticket Hypothesis".

Paper: Eran Malach, Gilad Yehudai, Shai Shalev-Shwartz, Ohad Shamir, "Proving the Lottery Ticket Hypothesis:
Pruning is All You Need", ICML 2020. https://arxiv.org/abs/2002.00585

The paper proves that a randomly initialised ReLU network of twice the depth and polynomially larger width
contains, with high probability, a subnetwork that approximates any given bounded target network, found by
removing weights only, never training them: pruning a random network is as expressive as training it (the
"strong" lottery ticket). It also shows that removing whole neurons cannot do as well. It gives no algorithm,
so as a library feature it is not meaningful; what ships here is the search its claim invites: the weights
stay exactly as drawn, and a per-layer top-k mask over learned scores is trained by edge-popup (Ramanujan et
al., "What's Hidden in a Randomly Weighted Neural Network?", CVPR 2020, Alg. 1) through
:class:`prunekit.train.frozen.Supermask`; the final mask is installed as a hard mask, so every kept weight is
bit-identical to its random draw and every other is zero.

Telemetry: the fraction of mask entries that changed from the initial scores' top-k (the search moved),
the number of parameters whose bytes changed (0: the weights were never trained), and the score-training
loss of the first and last epoch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..masks import install_masks_, prunable_weights
from ..train import fit
from ..train.config import method_train_config
from ..train.frozen import FrozenWeights, Supermask
from ._config import MethodConfig, option
from ._filter_common import require_prune_epochs
from ._registry import MethodResult, RunContext, Telemetry, register_method

__all__ = ["ProvingLTHConfig", "run"]

LEFT_OUT = ("theoretical existence result (Malach et al. 2020 give no algorithm for finding the subnetwork and "
            "no experiments); shipped instead: the closest feature its entry names, a strong-ticket search on "
            "frozen random weights (edge-popup score training, Ramanujan et al. 2020) with a bit-identity check")


@dataclass(frozen=True)
class ProvingLTHConfig(MethodConfig):
    lr: float = option(0.1, gt=0)  # score SGD step (Ramanujan et al. 2020, configs/smallscale/fc/fc_ukn_unsigned.yml)
    momentum: float = option(0.9, ge=0, lt=1)  # SGD momentum (same config)
    weight_decay: float = option(1e-4, ge=0)  # on the scores (authors' configs/smallscale/fc/fc_ukn_unsigned.yml)
    scheduler: Literal["cosine", "constant"] = "cosine"  # lr_policy cosine_lr (same config)


@register_method("proving-lth", config=ProvingLTHConfig, status="not-meaningful", kind="unstructured",
                 left_out=LEFT_OUT, needs=("train",),
                 telemetry=Telemetry(keys=("mask_changed", "weights_changed", "loss_first", "loss_last"),
                                     engaged=lambda t: t["mask_changed"] > 0 and t["weights_changed"] == 0,
                                     what="score training moving the top-k supermask on frozen weights",
                                     knob="raise prune_epochs or options.lr (the scores did not reorder)"))
def run(ctx: RunContext, cfg: ProvingLTHConfig) -> MethodResult:
    require_prune_epochs(ctx, "proving-lth")
    model = ctx.model
    sparsity = {f: ctx.target_value for f in prunable_weights(model, tuple(ctx.ignore), recurrent=False)}
    gen = torch.Generator().manual_seed(int(ctx.seed))
    with FrozenWeights(model) as frozen:
        net = Supermask(model, sparsity, generator=gen)
        start = net.masks()
        hist = fit(net, ctx.train_data, method_train_config(
            ctx, optimizer="sgd", lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            scheduler=cfg.scheduler)).history
        masks = {f: m.cpu() for f, m in net.masks().items()}
    flips = sum(int((masks[f] != start[f].cpu()).sum()) for f in masks)
    total = sum(m.numel() for m in masks.values())
    install_masks_(model, masks, mode="hard")
    telemetry = {"mask_changed": flips / max(total, 1), "weights_changed": len(frozen.changed),
                 "loss_first": float(hist[0]["train_loss"]), "loss_last": float(hist[-1]["train_loss"])}
    kept = sum(int(m.sum()) for m in masks.values())
    info = {"sparsity": 1 - kept / max(total, 1), "layers": len(masks), "score_epochs": len(hist),
            "train_accuracy": float(hist[-1].get("train_acc", float("nan"))), **telemetry}
    return MethodResult(model=model, info=info, telemetry=telemetry)
