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

import torch

from ..errors import ConfigError
from ..masks import dense_weight, get_masks, install_masks_, mask_report, prunable_weights, select_masks, update_masks_
from ..masks.patterns import get_pattern
from ..masks.workflows import method_options, target_sparsity, train_config
from ..schedules import dns_update_probability
from ._registry import MethodResult, RunContext, register_method

__all__ = ["hysteresis_mask", "dns_thresholds", "run_dns"]


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


@register_method("dns", kind="unstructured", needs_data=True, defaults={
    "gamma": 1e-4,  # mask-update probability (1 + gamma * step) ** -power (reference code)
    "power": 1.0,
    "stop_fraction": 0.75,  # fraction of the pruning run after which masks are frozen (iter_stop)
    "low": 0.9,  # hysteresis band: cut at <= low * t, splice at > high * t (reference code: 0.9 / 1.1)
    "high": 1.1,
    "exact": True,  # after the dynamic phase, move the mask to exactly the target (fewest changes)
})
def run_dns(ctx: RunContext) -> MethodResult:
    """Train ``ctx.prune_epochs`` epochs with spliceable (feedback) masks, then freeze them."""
    from ..schedules import MaskUpdate
    from ..train import fit

    opts = method_options("dns", ctx.options)
    sparsity = target_sparsity(ctx.target, "dns")
    if ctx.train_data is None:
        raise ConfigError("dns prunes and splices during training and needs train_data")
    if not 0 < opts["low"] <= 1 <= opts["high"]:
        raise ConfigError(f"low={opts['low']}, high={opts['high']}: the band needs 0 < low <= 1 <= high")
    params = prunable_weights(ctx.model, ctx.ignore)
    thresholds = dns_thresholds(params, sparsity, opts["low"])
    install_masks_(ctx.model, {f: torch.ones_like(p, dtype=torch.bool) for f, p in params.items()}, mode="feedback")

    def update(model, step):
        masks = get_masks(model)
        return {f: hysteresis_mask(dense_weight(model, f), masks[f], thresholds[f],
                                   low=opts["low"], high=opts["high"]) for f in params}

    cfg = train_config(ctx, max(1, ctx.prune_epochs))
    total = cfg.epochs * len(ctx.train_data)
    stop = max(1, int(opts["stop_fraction"] * total))
    # first cut at step 0, then the probabilistic revisions until `stop`
    update_masks_(ctx.model, update(ctx.model, 0))
    cb = MaskUpdate(update, probability=lambda s: dns_update_probability(s, gamma=opts["gamma"], power=opts["power"],
                                                                         stop=stop), seed=ctx.seed)
    fit(ctx.model, ctx.train_data, cfg, callbacks=[cb])
    dynamic = 1 - sum(int(m.sum()) for m in get_masks(ctx.model).values()) / sum(p.numel() for p in params.values())
    if opts["exact"]:
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
    return MethodResult(ctx.model, callbacks=[], info={"splices": cb.splices, "prunes": cb.prunes,
                                                       "mask_updates": cb.updates, "dynamic_sparsity": dynamic,
                                                       "sparsity": report.sparsity})

