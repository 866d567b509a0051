"""BN-ISTA: proximal (ISTA) steps drive BatchNorm scales to exact zeros; zero channels are removed.

Paper: Jianbo Ye, Xin Lu, Zhe Lin, James Z. Wang, "Rethinking the Smaller-Norm-Less-Informative Assumption
in Channel Pruning of Convolution Layers", ICLR 2018. https://arxiv.org/abs/1802.00124

The paper treats a BatchNorm scale ``gamma`` as the on/off switch of its channel: at ``gamma = 0`` the channel
emits a constant whatever the input, so it carries no information. Instead of adding a penalty to the loss,
it follows each ordinary step with a proximal step on the scales, ``gamma <- sign(gamma) * max(|gamma| -
lr * rho * lambda_l, 0)``, which lands exactly on zero; ``lambda_l`` weighs each layer by what one of its
channels costs, so expensive layers are thinned first. Because the scale of ``gamma`` is arbitrary when a
BatchNorm follows, the paper multiplies every ``gamma`` (and ``beta``) by a small ``alpha`` and divides the
weights reading those channels by ``alpha`` — the function is unchanged but the scales are now small, so
the same ``rho`` zeroes them sooner — and undoes the rescaling after training. Here the proximal step is the
:class:`~prunekit.methods._regularizers.BNScaleISTA` callback, ``lambda_l`` is the per-channel MAC cost of the
layer normalised to mean 1 (the paper's exact Eq. 2 normalisation is not reproduced), the rescaling is
checked numerically to preserve the model's outputs, the constant output of each zero channel is folded
into the layers that read it (bias, or the running mean of the BatchNorm after the reader), and the cut
ranks channels by ``|gamma|`` (the registered ``bn-scale`` criterion) globally, so exact zeros go first,
until the MAC/parameter target is met.

Telemetry: the fraction of scales exactly zero before the cut, and how many removed channels were zero
(``emergent``: the paper's removal) against those the ranking added to reach the target (``topped_up``: our
addition, so a target beyond what the proximal steps zeroed is still met). The mechanism engaged when some
scale reached exactly zero; with none, the run is a plain global ``|gamma|`` cut and ends with a warning.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from ..criteria.collect import collect
from ..errors import ConfigError
from ..train import fit
from ._config import MethodConfig, option
from ._filter_common import (
    bn_criterion_scores, bn_layers, conv_bn_pairs, cut_to_target, filter_groups, require_bn,
    require_prune_epochs, zero_scale_channels,
)
from ..train.config import method_train_config
from ._regularizers import BNScaleISTA
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BNISTAConfig(MethodConfig):
    rho: float = option(0.005, ge=0)  # global penalty (author README: 0.001 warm-up, then 0.005, ResNet-20/CIFAR-10)
    alpha: float = option(1.0, gt=0)  # gamma-W rescaling factor (paper searches 0.001, 0.01, 0.1, 1); 1 = none
    cost_weighted: bool = True  # lambda_l proportional to the cost of one channel of layer l (paper Eq. 2), mean 1


def layer_cost_weights(model: nn.Module, example_inputs) -> dict[str, float]:
    """``{bn_fqn: lambda_l}``: MACs of one output channel of the conv feeding each BN, normalised to mean 1."""
    pairs = conv_bn_pairs(model, example_inputs)
    mods = dict(model.named_modules())
    outs = collect(model, [(example_inputs, None)], outputs=[c for c, _ in pairs], cap=1).outputs
    area = {c: int(o[0][0, 0].numel()) for c, o in outs.items()}
    cost = {bn: float(mods[c].weight[0].numel() * area[c]) for c, bn in pairs}
    mean = sum(cost.values()) / max(len(cost), 1)
    return {bn: v / mean for bn, v in cost.items()}


class GammaRescale:
    """The gamma-W rescaling trick: BN affines times ``alpha``, the layers reading them divided by ``alpha``.

    :meth:`apply_` finds, in forward order, every Conv/Linear whose input became ``alpha`` times larger and
    divides its weight by ``alpha``; it refuses (and restores the model) when an input changed in any other
    way, so the rescaled model always computes what the original did. :meth:`undo_` reverts it.
    """

    def __init__(self, model: nn.Module, example_inputs, alpha: float):
        self.model, self.x, self.alpha = model, example_inputs, float(alpha)
        self.bns = [bn for _, bn in bn_layers(model)]
        self.readers: list[nn.Module] = []

    def _inputs(self) -> dict[nn.Module, torch.Tensor]:
        """The first input of every Conv2d/Linear on ``example_inputs``, in forward order."""
        names = {n: m for n, m in self.model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        seen = collect(self.model, [(self.x, None)], inputs=list(names)).inputs
        return {names[n]: xs[0] for n, xs in seen.items()}

    def apply_(self) -> "GammaRescale":
        if self.alpha == 1.0:
            return self
        was = self.model.training
        self.model.eval()
        saved = {k: v.clone() for k, v in self.model.state_dict().items()}
        try:
            before = self._inputs()
            with torch.no_grad():
                for bn in self.bns:
                    bn.weight.mul_(self.alpha)
                    bn.bias.mul_(self.alpha)
            for mod in before:  # forward order; each fix restores everything downstream of it
                now = self._inputs()[mod]
                ref = before[mod]
                if torch.allclose(now, ref, rtol=1e-4, atol=1e-6):
                    continue
                if not torch.allclose(now, self.alpha * ref, rtol=1e-3, atol=1e-6 * max(self.alpha, 1.0)):
                    name = next(n for n, m in self.model.named_modules() if m is mod)
                    raise ConfigError(
                        f"options['alpha']={self.alpha}: the input of {name!r} does not scale with the BatchNorm "
                        f"outputs, so the gamma-W rescaling would change the model; use alpha=1.0 for this model"
                    )
                with torch.no_grad():
                    mod.weight.div_(self.alpha)
                self.readers.append(mod)
        except Exception:
            self.model.load_state_dict(saved)
            self.readers = []
            raise
        finally:
            self.model.train(was)
        return self

    def undo_(self) -> None:
        if self.alpha == 1.0:
            return
        with torch.no_grad():
            for bn in self.bns:
                bn.weight.div_(self.alpha)
                bn.bias.div_(self.alpha)
            for mod in self.readers:
                mod.weight.mul_(self.alpha)
        self.readers = []


def fold_constant_channels_(model: nn.Module, ctx, batches=None) -> dict:
    """Fold the constant output of every ``gamma == 0`` channel into the layers that read it, then silence it.

    A channel whose BatchNorm scale is exactly zero emits the same value ``v`` at every position (after the
    ReLU: ``max(beta, 0)``; pools keep it). For each reader we check, on recorded inputs, that the channel is
    constant, and add its contribution to the reader's bias (linear/conv with bias) or subtract it from the
    running mean of the BatchNorm that follows the reader (in training mode that BN removes constants by
    itself); the channel's ``beta`` and running mean are then zeroed, so it outputs exactly 0 and removing it
    is exact. With zero-padded convolutions only border pixels differ. Returns
    ``{"folded": n, "not_folded": n}``.
    """
    mods = dict(model.named_modules())
    groups = filter_groups(model, ctx)
    out_bn = {c: g.bns[0] for g in groups for c in g.convs if g.bns}
    readers = []  # (bn module, channel, reader module fqn, positions in the reader's input feature dim)
    for g in groups:
        for b in g.bns:
            bn = mods[b]
            zero = (bn.weight.detach() == 0).nonzero().flatten().tolist()
            for c in zero:
                for m in g.group.members:
                    if m.role != "consumer":
                        continue
                    r_fqn, pname = m.fqn.rpartition(".")[0], m.fqn.rpartition(".")[2]
                    r = mods.get(r_fqn)
                    if pname == "weight" and isinstance(r, (nn.Conv2d, nn.Linear)) and m.dim == 1:
                        readers.append((bn, c, r_fqn, m.positions([c])))
    if not readers:
        return {"folded": 0, "not_folded": 0}
    seen = collect(model, batches if batches is not None else [(ctx.example_inputs, None)],
                   inputs=sorted({r[2] for r in readers})).inputs
    folded = skipped = 0
    done: set = set()
    with torch.no_grad():
        for bn, c, r_fqn, pos in readers:
            r = mods[r_fqn]
            x = torch.cat(seen[r_fqn]).to(r.weight.device)
            cols = x[:, torch.as_tensor(pos)] if isinstance(r, nn.Linear) else x[:, int(pos[0])]
            v = cols.reshape(len(x), -1) if isinstance(r, nn.Linear) else cols.reshape(-1)
            if not bool(torch.allclose(v, v.reshape(-1)[0].expand_as(v), atol=1e-6)):
                skipped += 1
                continue
            if isinstance(r, nn.Linear):
                delta = r.weight[:, torch.as_tensor(pos)] @ v[0]
            else:
                delta = r.weight[:, int(pos[0])].sum(dim=(-2, -1)) * v.reshape(-1)[0]
            if r.bias is not None:
                r.bias.add_(delta)
            elif r_fqn in out_bn and mods[out_bn[r_fqn]].running_mean is not None:
                mods[out_bn[r_fqn]].running_mean.sub_(delta)
            else:
                skipped += 1
                continue
            done.add((id(bn), c))
            folded += 1
        for bn, c, _, _ in readers:
            if (id(bn), c) in done:
                bn.bias[c] = 0.0
                bn.running_mean[c] = 0.0
    return {"folded": folded, "not_folded": skipped}


def ista_callbacks(model: nn.Module, example_inputs, rho: float = BNISTAConfig.rho,
                   cost_weighted: bool = True) -> list:
    """The BN-ISTA proximal step for any training loop (all affine BatchNorms of ``model``)."""
    bns = dict(bn_layers(model))
    weights = layer_cost_weights(model, example_inputs) if cost_weighted else {}
    return [BNScaleISTA(bns, rho, weights)]


@register_method(
    "bn-ista", config=BNISTAConfig, kind="structured", needs=("train",),
    telemetry=Telemetry(
        keys=("zero_scale_fraction", "removed_channels", "emergent", "topped_up"),
        engaged=lambda t: t["zero_scale_fraction"] > 0,
        what="ISTA steps driving BN scales to exactly zero",
        knob="raise options.rho (or lower options.alpha) or prune_epochs; "
             "benchmarks/recipes/filter_engaged.yaml gives the bench setting's rho"))
def run(ctx: RunContext, cfg: BNISTAConfig) -> MethodResult:
    require_bn(ctx.model, "bn-ista")
    require_prune_epochs(ctx, "bn-ista")
    cbs = ista_callbacks(ctx.model, ctx.example_inputs, cfg.rho, cfg.cost_weighted)
    rescale = GammaRescale(ctx.model, ctx.example_inputs, cfg.alpha).apply_()
    fit(ctx.model, ctx.train_data, method_train_config(ctx), callbacks=cbs)
    rescale.undo_()
    zero = cbs[0].zero_fraction()
    fold = fold_constant_channels_(ctx.model, ctx, ctx.calib)
    zero_channels = zero_scale_channels(ctx.model, ctx)
    report = cut_to_target(ctx.model, ctx, bn_criterion_scores(ctx.model), allocation="global")
    emergent = zero_channels - zero_scale_channels(ctx.model, ctx)  # a group keeps one channel even when all are 0
    telemetry = {"zero_scale_fraction": zero, "removed_channels": report["removed_channels"], "emergent": emergent,
                 "topped_up": report["removed_channels"] - emergent}
    return MethodResult(model=ctx.model, telemetry=telemetry,
                        info={"rho": cfg.rho, "alpha": cfg.alpha, "zero_gamma_fraction": zero,
                              "epochs_trained": ctx.prune_epochs, **fold, **report})
