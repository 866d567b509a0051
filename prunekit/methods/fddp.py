"""FDDP: frequency-domain dynamic pruning of conv kernels.

Paper: Zhenhua Liu, Jizheng Xu, Xiulian Peng, Ruiqin Xiong, "Frequency-Domain Dynamic Pruning for Convolutional
Neural Networks", NeurIPS 2018. https://papers.nips.cc/paper/7382-frequency-domain-dynamic-pruning-for-convolutional-neural-networks

Neighbouring taps of a conv kernel are correlated, so a kernel's energy sits in a few 2-D DCT coefficients.
FDDP prunes those coefficients instead of the spatial taps: the network runs with each kernel rebuilt from
its masked coefficients, while the full coefficients keep receiving the gradient, and the mask is recomputed
from thresholds at every iteration, so a coefficient cut too early can come back (dynamic pruning in the
style of Dynamic Network Surgery: cut below ``low * t``, restore above ``high * t``). The band-adaptive form
groups coefficients by frequency band (``u + v``) and gives each band its own threshold, pruning high bands
harder than low ones. Here the DCT is orthonormal (:mod:`prunekit.masks.dct`), so updating the full
coefficients by their gradient is the same as updating the full spatial kernel by the gradient at the
rebuilt one; the result is plain conv weights ``P_M(W)`` with the coefficient masks kept, for the fine-tune,
by a projection callback. Linear layers and 1x1 convs are not touched (the paper prunes conv kernels).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..errors import ConfigError
from ..masks import prunable_weights
from ..masks.dct import band_index, dct2, idct2
from ..train import fit
from ..train.callbacks import Callback
from ..train.config import method_train_config
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

__all__ = ["FDDPConfig", "band_rates", "band_thresholds", "FrequencyMasks", "DCTProjection", "run"]


@dataclass(frozen=True)
class FDDPConfig(MethodConfig):
    # "adaptive": one threshold per frequency band u+v, rates growing with the band (paper sec. 3.3, band-adaptive
    # FDDP; the rate rule - linear in u+v - is ours, the paper's per-band rates were not found); "none": one
    # threshold per layer over all coefficients (paper sec. 3.2, FDDP)
    bands: Literal["adaptive", "none"] = "adaptive"
    low: float = option(0.9, gt=0, le=1)  # cut active coefficients at |c| <= low * t (DNS hysteresis, recalled)
    high: float = option(1.1, ge=1)  # restore pruned coefficients at |c| > high * t (DNS hysteresis, recalled)
    frequency: int = option(1, ge=1)  # iterations between mask updates (paper: the mask is updated every iteration)
    exact: bool = False  # ours: at the end move each layer's mask to exactly the target (fewest changes)


def band_rates(counts: torch.Tensor, sparsity: float, mode: str = "adaptive") -> torch.Tensor:
    """Pruning rate of each band ``b`` (``counts[b]`` coefficients) so that the layer loses ``sparsity`` of them.

    ``adaptive``: ``r_b = min(1, s * (b + 1))`` with ``s`` such that the rates average to ``sparsity``;
    ``none``: every band at ``sparsity``.

    Example:
        >>> [round(r, 6) for r in band_rates(torch.tensor([1., 2., 1.]), 0.5).tolist()]
        [0.25, 0.5, 0.75]
    """
    counts = counts.double()
    if mode == "none" or sparsity <= 0:
        return torch.full_like(counts, sparsity)
    weight = torch.arange(1, len(counts) + 1, dtype=torch.float64)
    lo, hi = 0.0, 1.0 / float(weight.min())
    for _ in range(60):
        s = (lo + hi) / 2
        if float((counts * (s * weight).clamp(max=1.0)).sum()) < sparsity * float(counts.sum()):
            lo = s
        else:
            hi = s
    return (hi * weight).clamp(max=1.0)


def band_thresholds(coef: torch.Tensor, sparsity: float, cfg: FDDPConfig) -> torch.Tensor:
    """``[kh, kw]`` threshold ``t`` of each coefficient position: the first cut (``|c| <= low * t``) removes
    its band's rate of the band's coefficients."""
    bands = band_index(coef.shape[-2], coef.shape[-1]).to(coef.device)
    if cfg.bands == "none":
        bands = torch.zeros_like(bands)
    n = int(bands.max()) + 1
    a = coef.detach().abs().reshape(-1, *bands.shape)
    counts = torch.stack([(bands == b).sum() * a.shape[0] for b in range(n)])
    rates = band_rates(counts, sparsity, cfg.bands)
    t = torch.zeros(bands.shape, dtype=coef.dtype, device=coef.device)
    for b in range(n):
        vals = a[:, bands == b].flatten().float()
        q = torch.quantile(vals, float(rates[b])).item() if rates[b] > 0 else -1.0
        t[bands == b] = q / cfg.low
    return t


class FrequencyMasks(Callback):
    """Dynamic coefficient masks with feedback: the network runs with ``P_M(W_full)``; the optimizer's step
    is added to ``W_full`` (all coefficients learn); every ``frequency`` steps ``M`` is recomputed by the
    hysteresis rule on ``dct2(W_full)``. ``splices`` counts coefficients that came back (mask 0 -> 1)."""

    def __init__(self, layers: dict[str, nn.Parameter], thresholds: dict, cfg: FDDPConfig):
        self.layers, self.thresholds, self.cfg = layers, thresholds, cfg
        self.full = {f: p.detach().clone() for f, p in layers.items()}
        self.masks = {f: torch.ones_like(p, dtype=torch.bool) for f, p in layers.items()}
        self.splices = self.prunes = self.updates = 0
        self.update()

    @torch.no_grad()
    def update(self) -> None:
        for f, p in self.layers.items():
            c = dct2(self.full[f])
            a, m, t = c.abs(), self.masks[f], self.thresholds[f]
            new = m.clone()
            new[m & (a <= self.cfg.low * t)] = False
            new[~m & (a > self.cfg.high * t)] = True
            self.splices += int((new & ~m).sum())
            self.prunes += int((~new & m).sum())
            self.masks[f] = new
            p.copy_(idct2(c * new))
        self.updates += 1

    @torch.no_grad()
    def on_after_step(self, state) -> None:
        for f, p in self.layers.items():  # the step taken at P_M(W_full), applied to W_full
            self.full[f] += p - idct2(dct2(self.full[f]) * self.masks[f])
        if state.step % self.cfg.frequency == 0:
            self.update()
        else:
            for f, p in self.layers.items():
                p.copy_(idct2(dct2(self.full[f]) * self.masks[f]))


class DCTProjection(Callback):
    """Fine-tune callback: after every step, remove the kernels' DCT coefficients outside the fixed masks."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]):
        self.model, self.masks = model, {f: m.clone() for f, m in masks.items()}

    @torch.no_grad()
    def on_after_step(self, state) -> None:
        for f, m in self.masks.items():
            p = self.model.get_parameter(f)
            p.copy_(idct2(dct2(p) * m.to(p.device)))


def _exact(full: torch.Tensor, mask: torch.Tensor, sparsity: float) -> torch.Tensor:
    a = dct2(full).abs().flatten()
    score = a + mask.flatten().to(a.dtype) * (a.max() + 1)  # active coefficients first, each group by |c|
    keep = torch.zeros_like(mask.flatten())
    keep[torch.topk(score, round((1 - sparsity) * a.numel())).indices] = True
    return keep.reshape(mask.shape)


@register_method("fddp", config=FDDPConfig, kind="unstructured", needs=("train",), status="partial",
                 left_out="frequency-domain conv kernels (the paper's speed-up is theoretical here); per-band rates "
                          "are our rule (the paper's not found); Linear layers are not pruned; the contract test "
                          "counts spatial zeros, which DCT-domain masks do not produce",
                 telemetry=Telemetry(keys=("splices", "prunes", "mask_updates", "coef_sparsity"),
                                     engaged=lambda t: t["splices"] >= 1 and t["coef_sparsity"] > 0,
                                     what="dynamic frequency-domain masks (pruned DCT coefficients coming back)",
                                     knob="raise prune_epochs (masks are revised every options.frequency steps "
                                          "while training) or lower options.high"))
def run(ctx: RunContext, cfg: FDDPConfig) -> MethodResult:
    """Train ``ctx.prune_epochs`` epochs with dynamic DCT-coefficient masks on the k x k conv kernels."""
    sparsity = ctx.target_value
    params = {f: p for f, p in prunable_weights(ctx.model, ctx.ignore).items()
              if isinstance(ctx.model.get_submodule(f.rpartition(".")[0]), nn.Conv2d) and p.shape[-1] * p.shape[-2] > 1}
    if not params:
        raise ConfigError("fddp prunes the DCT coefficients of k x k conv kernels (k > 1) and the model has none "
                          "outside ignore; use a conv net or another method for Linear / 1x1 layers")
    thresholds = {f: band_thresholds(dct2(p.detach()), sparsity, cfg) for f, p in params.items()}
    cb = FrequencyMasks(params, thresholds, cfg)
    fit(ctx.model, ctx.train_data, method_train_config(ctx, max(1, ctx.prune_epochs)), callbacks=[cb])
    masks = cb.masks
    dynamic = 1 - sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    if cfg.exact:
        masks = {f: _exact(cb.full[f], m, sparsity) for f, m in masks.items()}
    with torch.no_grad():
        for f, p in params.items():
            p.copy_(idct2(dct2(cb.full[f]) * masks[f]))
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    k = max(max(p.shape[-2:]) for p in params.values())
    per_band = {}
    for f, m in masks.items():
        bands = band_index(m.shape[-2], m.shape[-1])
        for b in range(int(bands.max()) + 1):
            n, z = per_band.get(b, (0, 0))
            per_band[b] = (n + int((bands == b).sum()) * m.shape[0] * m.shape[1], z + int((~m[:, :, bands == b]).sum()))
    telemetry = {"splices": cb.splices, "prunes": cb.prunes, "mask_updates": cb.updates,
                 "coef_sparsity": 1 - kept / total, "dynamic_sparsity": dynamic,
                 "band_sparsity": [round(z / n, 4) for b, (n, z) in sorted(per_band.items())]}
    spatial = sum(int((p == 0).sum()) for p in params.values()) / total
    return MethodResult(ctx.model, callbacks=[DCTProjection(ctx.model, masks)], telemetry=telemetry,
                        info={**telemetry, "spatial_zeros": spatial, "layers": sorted(params), "max_kernel": k})
