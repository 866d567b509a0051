"""Magnitude pruning with retraining (Han et al.).

Paper: "Learning both Weights and Connections for Efficient Neural Networks", Song Han, Jeff Pool, John
Tran, William J. Dally. NeurIPS 2015. https://arxiv.org/abs/1506.02626

Train the dense network, then remove every connection whose weight is small compared with the spread of
its layer: the cut-off of a layer is a quality parameter times the standard deviation of that layer's
weights, so layers with widely spread weights lose more of them. The surviving weights are retrained with
the pruned ones held at zero (keeping, not re-initialising, the survivors), and the prune → retrain cycle
repeats to reach high compression. Here one quality parameter is shared by all layers and chosen so the
whole model reaches the requested sparsity — equivalent to ranking every weight by ``|w| / σ_layer`` —
and the sparsity grows geometrically over the rounds.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from ..masks import prunable_weights
from ..masks.workflows import iterative_prune, method_options, target_sparsity, train_config
from ._registry import MethodResult, RunContext, register_method

__all__ = ["std_threshold_mask", "std_scaled_scores", "run_han_magnitude"]


def std_threshold_mask(weight: torch.Tensor, quality: float) -> torch.Tensor:
    """Keep mask of Han et al.'s rule: prune ``|w| < quality * std(w)``.

    Example:
        >>> w = torch.tensor([0.1, -2.0, 0.5, 3.0])
        >>> std_threshold_mask(w, 0.5).tolist()
        [False, True, False, True]
    """
    if not isinstance(quality, (int, float)) or quality < 0:
        raise ConfigError(f"quality={quality!r} must be a number >= 0 (threshold in units of the layer's std)")
    return weight.abs() >= quality * weight.detach().float().std()


def std_scaled_scores(model, ignore=(), exempt=()) -> dict[str, torch.Tensor]:
    """``|w| / std(layer)`` for every prunable weight: one global cut on these is one shared quality
    parameter ``q`` with per-layer thresholds ``q * σ_layer``. Already-pruned zeros are left out of σ."""
    out = {}
    for fqn, p in prunable_weights(model, ignore, exempt).items():
        w = p.detach().float()
        alive = w[w != 0]
        sigma = alive.std() if alive.numel() > 1 else w.std()
        out[fqn] = w.abs() / sigma.clamp_min(1e-12)
    return out


@register_method(
    "han-magnitude", kind="unstructured", needs_data=True, status="partial",
    left_out="neurons left with no inputs or outputs are not removed (no structural step); dropout rescaling "
             "during retraining is not applied; per-layer quality parameters from a sensitivity sweep are "
             "replaced by one shared parameter set by the target sparsity (override per layer with 'overrides')",
    defaults={
        "rounds": 3,  # prune -> retrain cycles (paper: iterative; AlexNet used several)
        "retrain_epochs": 1,  # masked retraining between rounds (the caller fine-tunes after the last)
        "retrain_lr_factor": 0.1,  # paper: retrain at 1/10 .. 1/100 of the original learning rate
        "threshold": "std",  # "std": |w| < q * std(layer) with one q; "uniform": same sparsity per layer
        "overrides": {},  # {layer fqn: sparsity} fixed for single layers (uniform threshold only)
        "exempt": (),  # ("first",) / ("last",) keep that layer dense
    })
def run_han_magnitude(ctx: RunContext) -> MethodResult:
    """Iterative magnitude pruning with per-layer std thresholds and masked retraining between rounds."""
    opts = method_options("han-magnitude", ctx.options)
    sparsity = target_sparsity(ctx.target, "han-magnitude")
    if opts["threshold"] not in ("std", "uniform"):
        raise ConfigError(f"threshold={opts['threshold']!r}: choose 'std' (q * std per layer) or 'uniform'")
    if opts["threshold"] == "std" and opts["overrides"]:
        raise ConfigError("overrides need threshold='uniform' (the std rule sets every layer from one q)")
    cfg = None
    if ctx.train_data is not None:
        base = train_config(ctx, opts["retrain_epochs"])
        cfg = base.replace(lr=base.lr * opts["retrain_lr_factor"])
    elif opts["rounds"] > 1 and opts["retrain_epochs"]:
        raise ConfigError("han-magnitude retrains between rounds and needs train_data; pass it or set rounds=1")
    exempt, ignore = tuple(opts["exempt"]), tuple(ctx.ignore)
    if opts["threshold"] == "std":
        history = iterative_prune(ctx.model, ctx.train_data, cfg, sparsity=sparsity, rounds=opts["rounds"],
                                  scores_fn=lambda m: std_scaled_scores(m, ignore, exempt), global_=True,
                                  ignore=ignore, exempt=exempt)
    else:
        history = iterative_prune(ctx.model, ctx.train_data, cfg, sparsity=sparsity, rounds=opts["rounds"],
                                  overrides=opts["overrides"], ignore=ignore, exempt=exempt)
    return MethodResult(ctx.model, callbacks=[], info={"rounds": history, "sparsity": history[-1]["sparsity"]})
