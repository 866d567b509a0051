"""GAL: soft channel masks driven to exact zeros by FISTA while the masked net learns to pass for the original.

Paper: Shaohui Lin, Rongrong Ji, Chenqian Yan, Baochang Zhang, Liujuan Cao, Qixiang Ye, Feiyue Huang, David
Doermann, "Towards Optimal Structured CNN Pruning via Generative Adversarial Learning", CVPR 2019.
https://arxiv.org/abs/1903.09291

GAL prunes without labels. Every prunable structure gets a learnable soft mask m on its output, initialised at
1; the masked network (the "generator", started from the pre-trained weights) is trained so that its outputs
cannot be told from those of the frozen original (the "teacher"): a small discriminator D learns, with a binary
cross-entropy, to call the teacher's outputs real and the student's fake, while the student minimises
mu * MSE(its logits, the teacher's) plus the adversarial loss of fooling D, plus lambda * ||m||_1. The weights
follow SGD; the masks follow FISTA -- a proximal gradient step with Nesterov-style momentum whose soft
threshold leaves exact zeros -- every ``mask_step`` iterations. Structures whose mask is 0 are removed and the
smaller network is fine-tuned with labels.

Here the structures are channels: one mask per channel of every affine BatchNorm, multiplied into the BN's
output (:class:`~._filter_common.ChannelGates`) and folded into its scale and shift at the end, so a channel
whose mask is 0 in every BatchNorm of its group is removed with no change to the function. The cut is the one
global ranking of :func:`~._filter_common.cut_to_target` on the masks: all zero-mask channels go, and when they
are not enough for the requested ``macs=`` / ``params=`` the lowest masks are removed on top (ours: the paper
sets no budget; telemetry separates the emergent zeros from the top-up). The discriminator is
:class:`prunekit.models.heads.Discriminator` on the logits. Not reproduced: masks on whole residual blocks
(the released ResNet code), since removing a block needs module replacement the engine does not do.

Telemetry: FISTA steps taken, the fraction of masks at exactly 0 before the cut, channels removed because
their mask was 0 (emergent) and on top of those (topped up), the discriminator's accuracy over the last
epoch and the final MSE to the teacher. The mechanism engaged when FISTA left at least one mask at 0.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..criteria.teacher import Teacher
from ..graph.tensors import model_device, move_to
from ..models.heads import Discriminator
from ..train import fit
from ..train.callbacks import Callback
from ..train.config import method_train_config
from ..train.loop import output_logits
from ._config import MethodConfig, option
from ._filter_common import (ChannelGates, fista_step, bn_layers, cut_to_target, require_bn, require_prune_epochs,
                             zero_scale_channels)
from ._regularizers import current_lr
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["GALConfig", "GALAdversarial", "fista_step", "discriminator_loss", "generator_loss", "run"]


@dataclass(frozen=True)
class GALConfig(MethodConfig):
    lam: float = option(0.6, ge=0)  # lambda, L1 weight on the masks (reference utils/options.py sparse_lambda=0.6)
    mu: float = option(1.0, ge=0)  # weight of the MSE to the teacher's logits (reference options miu=1)
    mask_step: int = option(200, ge=1)  # iterations between FISTA steps on the masks (reference mask_step=200)
    d_momentum: float = option(0.9, ge=0, lt=1)  # SGD momentum of the discriminator (reference main.py: 0.9)
    d_weight_decay: float = option(2e-4, ge=0)  # its weight decay (reference options weight_decay=2e-4)


def discriminator_loss(disc: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """BCE of ``disc`` calling the teacher's outputs ``real`` (label 1) and the student's ``fake`` (label 0)."""
    r, f = disc(real), disc(fake)
    return F.binary_cross_entropy_with_logits(r, torch.ones_like(r)) + \
        F.binary_cross_entropy_with_logits(f, torch.zeros_like(f))


def generator_loss(disc: nn.Module, fake: torch.Tensor) -> torch.Tensor:
    """The student's adversarial loss: BCE of ``disc`` calling its outputs real (label 1)."""
    f = disc(fake)
    return F.binary_cross_entropy_with_logits(f, torch.ones_like(f))


class GALAdversarial(Callback):
    """GAL's training as a callback: replaces the loop's loss by ``mu * MSE(student, teacher) + adversarial``,
    trains the discriminator one step per batch on (teacher, student) logits, and every ``mask_step`` steps moves
    the channel masks (``gates``, not in the loop's optimizer) by :func:`fista_step` with the loop's current lr.
    """

    def __init__(self, teacher: nn.Module, gates: ChannelGates, disc: nn.Module, *, lam: float = 0.6,
                 mu: float = 1.0, mask_step: int = 200, momentum: float = 0.9, weight_decay: float = 2e-4):
        self.teacher, self.gates, self.disc = teacher, gates, disc
        self.lam, self.mu, self.mask_step = float(lam), float(mu), int(mask_step)
        self.d_opt = torch.optim.SGD(disc.parameters(), lr=0.01, momentum=momentum, weight_decay=weight_decay)
        self.z_prev = {k: g.detach().clone() for k, g in gates.gates.items()}
        self.t = 1.0
        self.fista_steps, self.mse, self.d_right, self.d_seen = 0, float("nan"), 0, 0
        self._real = None

    def on_epoch_start(self, state) -> None:
        self.d_right = self.d_seen = 0

    def on_batch_start(self, state) -> None:
        with torch.no_grad():
            self._real = output_logits(self.teacher(state.inputs)).float()

    def on_before_backward(self, state) -> None:
        real, fake = self._real, state.outputs.float()
        for group in self.d_opt.param_groups:
            group["lr"] = current_lr(state.optimizer)
        self.d_opt.zero_grad(set_to_none=True)
        d_loss = discriminator_loss(self.disc, real, fake.detach())
        d_loss.backward()
        self.d_opt.step()
        with torch.no_grad():
            self.d_right += int((self.disc(real) > 0).sum() + (self.disc(fake) <= 0).sum())
            self.d_seen += 2 * len(real)
        mse = F.mse_loss(fake, real)
        self.mse = float(mse.detach())
        state.loss = self.mu * mse + generator_loss(self.disc, fake)  # label-free: replaces the task loss

    def on_after_backward(self, state) -> None:
        self.disc.zero_grad(set_to_none=True)
        if state.step % self.mask_step == 0:
            lr = current_lr(state.optimizer)
            with torch.no_grad():
                t = self.t
                for k, g in self.gates.gates.items():
                    grad = g.grad if g.grad is not None else torch.zeros_like(g)
                    new, self.z_prev[k], self.t = fista_step(g.detach(), grad, self.z_prev[k], t, lr=lr, lam=self.lam)
                    g.copy_(new)
            self.fista_steps += 1
        self.gates.zero_grad()

    def zero_fraction(self) -> float:
        n = sum(g.numel() for g in self.gates.gates.values())
        return sum(int((g == 0).sum()) for g in self.gates.gates.values()) / max(n, 1)

    def d_accuracy(self) -> float:
        return self.d_right / self.d_seen if self.d_seen else float("nan")


@register_method(
    "gal", config=GALConfig, kind="structured", needs=("train",), status="partial",
    smoke={"mask_step": 1},
    left_out="masks on whole residual blocks or branches (the released ResNet code): removing a block needs module "
             "replacement the structural engine does not do; masks sit on channels",
    telemetry=Telemetry(
        keys=("fista_steps", "zero_mask_fraction", "emergent", "topped_up", "d_accuracy", "mse"),
        engaged=lambda t: t["fista_steps"] >= 1 and t["zero_mask_fraction"] > 0,
        what="FISTA steps driving channel masks to exactly zero",
        knob="raise options.lam (L1 weight on the masks) or prune_epochs, or lower options.mask_step (iterations "
             "between FISTA steps)"))
def run(ctx: RunContext, cfg: GALConfig) -> MethodResult:
    require_bn(ctx.model, "gal")
    require_prune_epochs(ctx, "gal")
    model = ctx.model
    teacher = Teacher(model)
    with torch.no_grad():
        n_out = output_logits(teacher.model(move_to(ctx.example_inputs, model_device(model)))).shape[-1]
    disc = Discriminator(n_out).to(model_device(model))
    gates = ChannelGates(model, [f for f, _ in bn_layers(model)])
    gal = GALAdversarial(teacher.model, gates, disc, lam=cfg.lam, mu=cfg.mu, mask_step=cfg.mask_step,
                         momentum=cfg.d_momentum, weight_decay=cfg.d_weight_decay)
    try:
        fit(model, ctx.train_data, method_train_config(ctx), callbacks=[gal])
    finally:
        gates.remove()
    zero = gal.zero_fraction()
    scores = {f: g.detach().abs().clone() for f, g in gates.gates.items()}
    gates.fold_()  # a zero mask makes its BatchNorm scale and shift exactly zero
    zero_channels = zero_scale_channels(model, ctx)
    report = cut_to_target(model, ctx, scores, allocation="global")
    emergent = zero_channels - zero_scale_channels(model, ctx)  # a group keeps one channel even when all are 0
    telemetry = {"fista_steps": gal.fista_steps, "zero_mask_fraction": zero, "emergent": emergent,
                 "topped_up": report["removed_channels"] - emergent, "d_accuracy": gal.d_accuracy(),
                 "mse": gal.mse}
    info = {"lam": cfg.lam, "epochs_trained": ctx.prune_epochs, "teacher_mb": teacher.memory_bytes / 2 ** 20,
            "discriminator_params": sum(p.numel() for p in disc.parameters()), **report}
    del teacher, disc
    return MethodResult(model=model, telemetry=telemetry, info=info)
