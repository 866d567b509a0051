"""DJPQ: differentiable joint pruning and mixed-precision quantisation under a BOPs objective.

Paper: Ying Wang, Yadong Lu, Tijmen Blankevoort, "Differentiable Joint Pruning and Quantization for Hardware
Efficiency", ECCV 2020. https://arxiv.org/abs/2007.10463

Pruning channels and lowering bit-widths both cut the cost of a layer, and doing them in two stages misses
the trade-off between them. DJPQ learns both in one fine-tuning run from a full-precision model. Channels are
pruned as in the variational information bottleneck (VIBNet): each channel's output is multiplied by a noisy
gate z = mu + sigma * eps, a KL term pushes the gates to carry no information, and channels whose
signal-to-noise ratio mu^2 / sigma^2 is small are removed. Weights and activations of every layer are
fake-quantised with a learned step size and range, from which the bit-width follows differentiably (the
parametrisation of Uhlich et al.). The loss adds a penalty on the bit operations, BOPs = MACs of the kept
channels x weight bits x activation bits, so the optimiser itself decides where to remove channels and where
to lower precision.

Here: gates on the outputs of the affine BatchNorm layers (VIBNet's KL bound ``log(1 + mu^2/sigma^2)`` per
channel, sigma = exp(log_sigma)); weight quantisers :class:`prunekit.quantize.FakeQuant` with
``learn="step_qmax"`` through a parametrisation, activation quantisers on each conv/linear input; the gates and
quantiser parameters are trained by their own Adam (``aux_lr``) beside the model's optimizer. The BOPs term of a
layer uses the expected kept fraction of its output channels (``alpha / (alpha + threshold)`` per gated
channel, ours: the paper's exact relaxation is not verified) and the real bits; it is relative to the
32-bit x 32-bit dense BOPs. After training the gates' means are folded into BatchNorm, the weights are
snapped to whole bits and written quantised, and channels are cut by SNR: those below ``snr_threshold`` are
the paper's removal (``snr_pruned``), the rest of the MAC target is met by the lowest SNRs (``topped_up``).
:func:`count_bops` gives the exact BOPs of the result. Left out (status partial): the activation quantisers are
learned and reported but not kept in the saved model (prunekit stores weights only); the power-of-two
bit-width variant.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..masks import prunable_weights
from ..measure import count_macs
from ..quantize import FakeQuant
from ..train import fit
from ..train.callbacks import Callback
from ..train.config import method_train_config
from ._config import MethodConfig, option
from ._filter_common import bn_layers, conv_bn_pairs, cut_to_target, require_bn, require_prune_epochs
from ._registry import MethodResult, RunContext, Telemetry, register_method

__all__ = ["DJPQConfig", "VIBGates", "count_bops", "DJPQ", "run"]


@dataclass(frozen=True)
class DJPQConfig(MethodConfig):
    gamma: float = option(0.1, ge=0)  # weight of the relative BOPs term (ours: the paper's value is not found)
    vib_weight: float = option(1e-3, ge=0)  # weight of the VIB KL term per channel (ours; not found in the entry)
    snr_threshold: float = option(1.0, gt=0)  # prune channels with mu^2/sigma^2 below it (VIBNet-style; recalled)
    init_bits_w: int = option(8, ge=2, le=16)  # weight bits at the start (ours: from the FP model at 8 bits)
    init_bits_a: int = option(8, ge=2, le=16)  # activation bits at the start (ours)
    aux_lr: float = option(1e-2, gt=0)  # Adam lr of gates and quantiser parameters (ours)
    init_log_sigma: float = option(-3.0)  # gate noise at the start: sigma = exp(-3), SNR ~ 400 (ours)


class VIBGates:
    """Noisy channel gates ``z = mu + sigma * eps`` on the outputs of BatchNorm layers (``mu`` in eval mode).

    Leaf tensors owned by this object (the model's parameters and state_dict keys do not change).
    :meth:`kl` is VIBNet's bound ``sum log(1 + mu^2 / sigma^2)``; :meth:`snr` the per-channel ``mu^2/sigma^2``.
    """

    def __init__(self, model: nn.Module, bn_fqns, init_log_sigma: float = -3.0, seed: int = 0):
        mods = dict(model.named_modules())
        self.mu, self.log_sigma, self._handles, self._mods = {}, {}, [], {}
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        for f in bn_fqns:
            bn = mods[f]
            dev = bn.weight.device
            self.mu[f] = torch.ones(bn.num_features, device=dev, requires_grad=True)
            self.log_sigma[f] = torch.full((bn.num_features,), float(init_log_sigma), device=dev, requires_grad=True)
            self._mods[f] = bn
            self._handles.append(bn.register_forward_hook(self._hook(f)))

    def _hook(self, f):
        def hook(mod, _inp, out):
            z = self.mu[f]
            if mod.training:
                eps = torch.randn(z.shape, generator=self.gen).to(z.device)
                z = z + self.log_sigma[f].exp() * eps
            return out * z.view([1, -1] + [1] * (out.dim() - 2))
        return hook

    def parameters(self):
        return [*self.mu.values(), *self.log_sigma.values()]

    def snr(self, f: str) -> torch.Tensor:
        return self.mu[f] ** 2 / (2 * self.log_sigma[f]).exp()

    def kl(self) -> torch.Tensor:
        return sum(torch.log1p(self.snr(f)).sum() for f in self.mu)

    def fold_(self) -> None:
        """Multiply the gate means into the BatchNorm affine parameters and remove the hooks."""
        with torch.no_grad():
            for f, bn in self._mods.items():
                bn.weight.mul_(self.mu[f].to(bn.weight))
                bn.bias.mul_(self.mu[f].to(bn.bias))
        self.remove()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class _WeightQuant(nn.Module):
    """Parametrisation ``W -> FakeQuant(W)``; the quantiser's parameters stay outside the model's parameters."""

    def __init__(self, fq: FakeQuant):
        super().__init__()
        self.__dict__["fq"] = fq

    def forward(self, w):
        return self.fq(w)


def count_bops(model: nn.Module, example_inputs, bits_w: dict, bits_a: dict, default: int = 32) -> dict:
    """Exact bit operations of one forward on one sample: per conv/linear module ``MACs x b_w x b_a`` (bits
    looked up by module FQN, ``default`` where absent). Returns ``{"total": .., "per_module": {fqn: ..}}``.

    Example:
        >>> m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> count_bops(m, torch.randn(1, 4), {"0": 4, "2": 2}, {"0": 8, "2": 8})["total"]
        480
    """
    macs = count_macs(model, example_inputs[:1]).per_module
    per = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear)) and macs.get(name, 0):
            per[name] = int(macs[name]) * int(bits_w.get(name, default)) * int(bits_a.get(name, default))
    return {"total": sum(per.values()), "per_module": per}


class DJPQ(Callback):
    """The joint training: adds ``vib_weight * KL + gamma * BOPs / BOPs_fp32`` to the loss and steps the gates
    and quantisers with their own Adam after each optimizer step."""

    def __init__(self, gates: VIBGates, wq: dict, aq: dict, macs: dict, out_gate: dict, cfg: DJPQConfig):
        self.gates, self.wq, self.aq, self.macs, self.out_gate, self.cfg = gates, wq, aq, macs, out_gate, cfg
        self.dense_bops = 32 * 32 * sum(macs.values())
        params = gates.parameters() + [p for q in (*wq.values(), *aq.values()) for p in q.parameters()
                                       if p.requires_grad]
        self.opt = torch.optim.Adam(params, lr=cfg.aux_lr)
        self.last_bops = float("nan")

    def soft_bops(self) -> torch.Tensor:
        total = 0.0
        for name, macs in self.macs.items():
            keep = 1.0
            bn = self.out_gate.get(name)
            if bn is not None:
                snr = self.gates.snr(bn)
                keep = (snr / (snr + self.cfg.snr_threshold)).mean()
            total = total + macs * keep * self.wq[name].bits * self.aq[name].bits
        return total / self.dense_bops

    def on_before_backward(self, state) -> None:
        self.opt.zero_grad(set_to_none=True)
        bops = self.soft_bops()
        self.last_bops = float(bops.detach())
        state.loss = state.loss + self.cfg.vib_weight * self.gates.kl() + self.cfg.gamma * bops

    def on_after_step(self, state) -> None:
        self.opt.step()
        with torch.no_grad():  # keep each grid at least 2 levels wide: step <= qmax (>= 1 bit each side)
            for q in (*self.wq.values(), *self.aq.values()):
                q.log_step.clamp_(max=float(q.log_qmax))


def _act_quantizer(cfg: DJPQConfig, module: nn.Module, store: dict, name: str):
    def hook(_mod, args):
        x = args[0]
        if name not in store:
            signed = bool((x.detach() < 0).any())
            store[name] = FakeQuant(cfg.init_bits_a, learn="step_qmax", signed=signed).to(x.device).init_from(x)
        return (store[name](x),) + tuple(args[1:])
    return module.register_forward_pre_hook(hook)


@register_method("djpq", config=DJPQConfig, kind="structured", needs=("train",), status="partial",
                 left_out="activation quantisers are learned and reported but not kept in the saved model (prunekit "
                          "stores weights only); the power-of-two bit-width variant; the paper's hyper-parameters "
                          "(gamma, KL weight, SNR threshold) were not found and are ours",
                 telemetry=Telemetry(keys=("snr_pruned", "topped_up", "mean_bits_w", "mean_bits_a", "bops_ratio"),
                                     engaged=lambda t: t["snr_pruned"] >= 1 and t["mean_bits_w"] < t["init_bits_w"],
                                     what="joint learning (channels below the SNR threshold and weight bits below "
                                          "their start)",
                                     knob="raise options.gamma (BOPs), options.vib_weight (gates) or prune_epochs"))
def run(ctx: RunContext, cfg: DJPQConfig) -> MethodResult:
    """Train gates, weights and quantisers under task + KL + BOPs; fold, snap bits, cut by SNR to the target."""
    require_bn(ctx.model, "djpq")
    require_prune_epochs(ctx, "djpq")
    model = ctx.model
    example = ctx.example_inputs.to(ctx.device) if torch.is_tensor(ctx.example_inputs) else ctx.example_inputs
    params = prunable_weights(model, ctx.ignore)
    mods = dict(model.named_modules())
    names = [f.rsplit(".", 1)[0] if "." in f else "" for f in params if f.endswith("weight")]
    names = [n for n in names if isinstance(mods[n], (nn.Conv1d, nn.Conv2d, nn.Linear))]
    macs_all = count_macs(model, example[:1]).per_module
    macs = {n: int(macs_all.get(n, 0)) for n in names}
    out_gate = dict(conv_bn_pairs(model, example))
    gates = VIBGates(model, [f for f, _ in bn_layers(model)], cfg.init_log_sigma, ctx.seed)
    wq, aq, handles = {}, {}, []
    for n in names:
        wq[n] = FakeQuant(cfg.init_bits_w, learn="step_qmax").init_from(mods[n].weight)
        parametrize.register_parametrization(mods[n], "weight", _WeightQuant(wq[n]))
        handles.append(_act_quantizer(cfg, mods[n], aq, n))
    model.eval()
    with torch.no_grad():  # create the activation quantisers from one batch (ranges from real inputs)
        model(next(iter(ctx.train_data))[0].to(ctx.device))
    cb = DJPQ(gates, wq, aq, macs, out_gate, cfg)
    fit(model, ctx.train_data, method_train_config(ctx), callbacks=[cb])
    for h in handles:
        h.remove()
    bits_w, bits_a = {}, {}
    for n in names:
        bits_w[n] = wq[n].snap_().stored_bits()
        bits_a[n] = aq[n].snap_().stored_bits()
        parametrize.remove_parametrizations(mods[n], "weight", leave_parametrized=True)
    snr = {f: gates.snr(f).detach().clone() for f in gates.mu}
    gates.fold_()
    below = sum(int((s < cfg.snr_threshold).sum()) for s in snr.values())
    # log SNR relative to the threshold: <= 0 below it (always removed: the paper's cut), the rest ranked
    report = cut_to_target(model, ctx, {f: torch.log(s / cfg.snr_threshold) for f, s in snr.items()},
                           allocation="global")
    removed = report["removed_channels"]
    bops_before = count_bops(model, example, {}, {})["total"]  # after the cut, 32 x 32 bits
    bops = count_bops(model, example, bits_w, bits_a)
    dense_bops = 32 * 32 * sum(macs.values())
    telemetry = {"snr_pruned": min(below, removed), "topped_up": max(0, removed - below),
                 "mean_bits_w": sum(bits_w.values()) / max(1, len(bits_w)),
                 "mean_bits_a": sum(bits_a.values()) / max(1, len(bits_a)), "bops_ratio": bops["total"] / dense_bops,
                 "init_bits_w": cfg.init_bits_w}
    info = {**telemetry, "bits_w": bits_w, "bits_a": bits_a, "bops": bops["total"], "dense_bops": dense_bops,
            "bops_reduction": dense_bops / max(1, bops["total"]), "bops_pruned_fp32": bops_before,
            "channels_below_threshold": below, "final_soft_bops": cb.last_bops,
            "epochs_trained": ctx.prune_epochs, **report}
    if not math.isfinite(info["final_soft_bops"]):
        info["final_soft_bops"] = None
    return MethodResult(model, info=info, telemetry=telemetry)
