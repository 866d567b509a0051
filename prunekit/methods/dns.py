"""Dynamic Network Surgery (DNS).

Paper: "Dynamic Network Surgery for Efficient DNNs", Yiwen Guo, Anbang Yao, Yurong Chen. NeurIPS 2016.
https://arxiv.org/abs/1608.04493

Pruning mistakes are hard to undo when removed weights are gone for good. DNS keeps every weight and a
binary mask per layer: the forward uses the masked weights, but the gradient updates all weights, pruned
ones included, so a removed connection that turns out to matter can grow back and be "spliced" in again.
Masks are revised with a hysteresis band around a per-layer threshold built from the mean and spread of
the layer's weight magnitudes: weights a bit below it are cut, weights a bit above it are restored, those
in between keep their state. Revisions become rarer as training goes on and stop at a fixed step, after
which training continues with the mask frozen.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..masks import dense_weight, get_masks, install_masks_, mask_report, prunable_weights, select_masks, update_masks_
from ..masks.patterns import get_pattern
from ..schedules import MaskUpdate, dns_update_probability
from ..train import fit
from ..train.config import method_train_config
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

__all__ = ["DNSConfig", "hysteresis_mask", "dns_thresholds", "run"]


@dataclass(frozen=True)
class DNSConfig(MethodConfig):
    gamma: float = option(1e-4, ge=0)  # update probability (1 + gamma*step)^-power (reference code)
    power: float = option(1.0, ge=0)  # same formula (reference code: power = 1)
    stop_fraction: float = option(0.75, gt=0, le=1)  # masks frozen after this fraction of the run (iter_stop)
    low: float = option(0.9, gt=0, le=1)  # hysteresis: cut kept weights at |w| <= low * t (reference code CCMaskCalc: 0.9)
    high: float = option(1.1, ge=1)  # splice pruned weights at |w| > high * t (reference code: 1.1)
    exact: bool = True  # ours: after the dynamic phase move the mask to exactly the target (fewest changes)


def hysteresis_mask(weight: torch.Tensor, mask: torch.Tensor, threshold: float, *, low: float = 0.9,
                    high: float = 1.1) -> torch.Tensor:
    """DNS's rule: cut kept weights with ``|w| <= low * t``, splice pruned ones with ``|w| > high * t``.

    Example:
        >>> w = torch.tensor([0.5, 0.95, 1.05, 2.0, 0.5, 0.95, 1.05, 2.0])
        >>> m = torch.tensor([True] * 4 + [False] * 4)
        >>> hysteresis_mask(w, m, 1.0).tolist()
        [False, True, True, True, False, False, False, True]
    """
    a = weight.detach().abs()
    out = mask.clone()
    out[mask & (a <= low * threshold)] = False
    out[~mask & (a > high * threshold)] = True
    return out


def dns_thresholds(params: dict, sparsity: float, low: float = 0.9) -> dict[str, float]:
    """Per-layer ``t = max(μ + c·σ, 0)`` of ``|w|`` with ``c`` chosen so the first cut (``|w| <= low·t``)
    removes ``sparsity`` of the layer. Returns ``{fqn: t}``."""
    out = {}
    for fqn, p in params.items():
        a = p.detach().abs().flatten().float()
        q = torch.quantile(a, sparsity).item() if sparsity > 0 else 0.0
        out[fqn] = max(q / low, 0.0)
    return out


@register_method("dns", config=DNSConfig, kind="unstructured", needs=("train",),
                 telemetry=Telemetry(keys=("splices", "prunes", "mask_updates"), engaged=lambda t: t["splices"] >= 1,
                                     what="splicing (pruned weights that grew back re-enter the mask)",
                                     knob="raise prune_epochs or options.stop_fraction (masks are revised only "
                                          "until then), or lower options.gamma (revisions become rarer with it)"))
def run(ctx: RunContext, cfg: DNSConfig) -> MethodResult:
    """Train ``ctx.prune_epochs`` epochs with spliceable (feedback) masks, then freeze them."""
    sparsity = ctx.target_value
    params = prunable_weights(ctx.model, ctx.ignore)
    thresholds = dns_thresholds(params, sparsity, cfg.low)
    install_masks_(ctx.model, {f: torch.ones_like(p, dtype=torch.bool) for f, p in params.items()}, mode="feedback")

    def update(model, step):
        masks = get_masks(model)
        return {f: hysteresis_mask(dense_weight(model, f), masks[f], thresholds[f], low=cfg.low, high=cfg.high)
                for f in params}

    train = method_train_config(ctx, max(1, ctx.prune_epochs))
    stop = max(1, int(cfg.stop_fraction * train.epochs * len(ctx.train_data)))
    update_masks_(ctx.model, update(ctx.model, 0))  # the first cut at step 0, then the probabilistic revisions
    cb = MaskUpdate(update, probability=lambda s: dns_update_probability(s, gamma=cfg.gamma, power=cfg.power, stop=stop),
                    seed=ctx.seed)
    fit(ctx.model, ctx.train_data, train, callbacks=[cb])
    dynamic = 1 - sum(int(m.sum()) for m in get_masks(ctx.model).values()) / sum(p.numel() for p in params.values())
    if cfg.exact:
        # move the dynamic mask to the exact target with the fewest changes: active weights rank above
        # dormant ones, each group by magnitude
        current = get_masks(ctx.model)
        scores = {}
        for f in params:
            a = dense_weight(ctx.model, f).abs()
            scores[f] = a + current[f].to(a.dtype) * (a.max() + 1)
        masks = select_masks(scores, get_pattern("element"), {f: sparsity for f in params})
    else:
        masks = {f: m.clone() for f, m in get_masks(ctx.model).items()}
    install_masks_(ctx.model, masks, mode="hard")  # frozen masks from here on (the caller's fine-tune)
    report = mask_report(ctx.model)
    telemetry = {"splices": cb.splices, "prunes": cb.prunes, "mask_updates": cb.updates}
    return MethodResult(ctx.model, callbacks=[], telemetry=telemetry,
                        info={**telemetry, "dynamic_sparsity": dynamic, "sparsity": report.sparsity})
