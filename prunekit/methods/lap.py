"""Lookahead pruning (LAP).

Paper: "Lookahead: A Far-sighted Alternative of Magnitude-based Pruning", Sejun Park, Jaeho Lee, Sangwoo Mo,
Jinwoo Shin. ICLR 2020. https://arxiv.org/abs/2002.04809

Magnitude pruning asks how much removing a weight changes its own layer. LAP looks one layer further on
each side: a weight joins input neuron ``j`` to output neuron ``k``, so the damage of removing it is
carried into the network through everything that feeds ``j`` and everything ``k`` feeds. Its score is
``|w| * ||W_prev[j, :]|| * ||W_next[:, k]||``, the magnitude scaled by the norm of the weights entering
the input neuron in the previous layer and of those leaving the output neuron in the next layer (1 when
there is no such layer). We rank with the squared score, which orders weights the same way. A weight
whose input neuron is dead (all incoming weights pruned) therefore scores zero however large it is. Layers
are pruned to the same sparsity each round and the network is retrained between rounds.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from ..errors import ConfigError
from ..masks import get_masks, register_weight_criterion
from ..train.rewind import iterative_prune, method_options, target_sparsity, train_config
from ._registry import MethodResult, RunContext, register_method

log = logging.getLogger(__name__)

__all__ = ["lap_scores", "score_lap", "lap_round_sparsities", "run_lap"]

LAP_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _chain(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's Linear/Conv2d layers in registration order: LAP's neighbour chain."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LAP_LAYER_TYPES)]


def _out_norms(w_prev: torch.Tensor, n_in: int) -> torch.Tensor | None:
    """Squared norm of each output neuron/channel of the previous layer, expanded to ``n_in`` inputs.

    A conv feeding a linear layer through a flatten gives ``n_in = channels * h * w``: each channel's norm
    is repeated over its ``h * w`` positions (channel-major flatten). None when the shapes do not connect.
    """
    norms = w_prev.pow(2).flatten(1).sum(1)  # [out_prev]
    if norms.numel() == n_in:
        return norms
    if n_in % norms.numel() == 0:
        return norms.repeat_interleave(n_in // norms.numel())
    return None


def _in_norms(w_next: torch.Tensor, n_out: int) -> torch.Tensor | None:
    """Squared norm of the next layer's weights leaving each of this layer's ``n_out`` outputs."""
    n_in_next = w_next.shape[1]
    if n_in_next == n_out:
        return w_next.pow(2).transpose(0, 1).flatten(1).sum(1)  # [n_out]
    if n_in_next % n_out == 0:  # conv -> flatten -> linear: [o, n_out * hw]
        return w_next.reshape(w_next.shape[0], n_out, -1).pow(2).sum((0, 2))
    return None


def lap_scores(weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """Squared lookahead scores of a chain of layer weights (Linear ``[out, in]`` or Conv ``[out, in, kh, kw]``).

    Pass the *effective* (already masked) weights, so pruned neighbours count as zero. A missing or
    unconnectable neighbour contributes a factor of 1.

    Example:
        >>> w1 = torch.tensor([[1.0, 1.0], [0.0, 0.0]])     # hidden neuron 1 receives nothing
        >>> w2 = torch.tensor([[3.0, 5.0]])
        >>> lap_scores([w1, w2])[1]                          # its outgoing 5.0 is worthless
        tensor([[18.,  0.]])
    """
    out = []
    for i, w in enumerate(weights):
        score = w.detach().pow(2)
        n_out, n_in = w.shape[0], w.shape[1]
        shape_in = (1, n_in) + (1,) * (w.dim() - 2)
        shape_out = (n_out,) + (1,) * (w.dim() - 1)
        if i > 0:
            prev = _out_norms(weights[i - 1].detach(), n_in)
            if prev is not None:
                score = score * prev.reshape(shape_in)
            else:
                log.debug("LAP: layer %d does not connect to layer %d; previous factor 1", i, i - 1)
        if i + 1 < len(weights):
            nxt = _in_norms(weights[i + 1].detach(), n_out)
            if nxt is not None:
                score = score * nxt.reshape(shape_out)
            else:
                log.debug("LAP: layer %d does not connect to layer %d; next factor 1", i, i + 1)
        out.append(score)
    return out


@register_weight_criterion("lap")
def score_lap(model, params, *, calib=None, loss_fn=None, generator=None):
    """Weight criterion ``"lap"``: lookahead scores over the model's chain of Linear/Conv layers.

    Every Linear/Conv layer is a neighbour (ignored layers included); only ``params`` are scored. Masked
    weights count as zero, so iterating LAP sees the pruning of earlier rounds.
    """
    chain = _chain(model)
    masks = get_masks(model)
    weights = []
    for name, m in chain:
        fqn = f"{name}.weight" if name else "weight"
        w = m.weight.detach()
        weights.append(w * masks[fqn] if fqn in masks else w)
    fqns = [f"{name}.weight" if name else "weight" for name, _ in chain]
    by_fqn = dict(zip(fqns, lap_scores(weights)))
    missing = [f for f in params if f not in by_fqn]
    if missing:
        raise ConfigError(f"criterion='lap' scores Linear/Conv weights only; {missing} are not; "
                          "ignore those layers (ignore=[...])")
    return {f: by_fqn[f] for f in params}


def lap_round_sparsities(sparsity: float, rounds: int) -> list[float]:
    """Per-round sparsities of iterative pruning with a constant pruning rate reaching ``sparsity``.

    Round ``r`` keeps ``(1 - sparsity) ** (r / rounds)`` of the weights (LAP prunes the same fraction of
    the survivors each round).

    Example:
        >>> [round(s, 4) for s in lap_round_sparsities(0.75, 2)]
        [0.5, 0.75]
    """
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ConfigError(f"rounds={rounds!r} must be a positive int (prune/retrain rounds), e.g. 5")
    return [1.0 - (1.0 - sparsity) ** ((r + 1) / rounds) for r in range(rounds)]



@register_method("lap", kind="unstructured", needs_data=True, defaults={
    "rounds": 5,  # prune/retrain rounds (paper: iterative, the same rate each round)
    "retrain_epochs": 1,  # epochs of masked retraining after every round but the last
    "global_": False,  # paper: layer-wise (uniform) ratios; True ranks all layers together
    "exempt": (),  # ("first",) / ("last",) keep those layers dense
})
def run_lap(ctx: RunContext) -> MethodResult:
    """Iterative LAP: ``rounds`` x (score with LAP, prune to the round's sparsity, retrain)."""
    opts = method_options("lap", ctx.options)
    sparsity = target_sparsity(ctx.target, "lap")
    lap_round_sparsities(sparsity, opts["rounds"])  # validates rounds before anything changes
    if opts["retrain_epochs"] and opts["rounds"] > 1 and ctx.train_data is None:
        raise ConfigError("lap retrains between rounds and needs train_data; pass train_data= or rounds=1")
    cfg = train_config(ctx, max(1, opts["retrain_epochs"]))
    history = iterative_prune(ctx.model, ctx.train_data if opts["retrain_epochs"] else None, cfg,
                              sparsity=sparsity, rounds=opts["rounds"], criterion="lap", global_=opts["global_"],
                              ignore=tuple(ctx.ignore), exempt=tuple(opts["exempt"]))
    return MethodResult(ctx.model, callbacks=[], info={"rounds": history, "sparsity": history[-1]["sparsity"]})
