"""RNN Jacobian: one-shot pruning of recurrent networks at initialisation by the temporal Jacobian's spectrum.

Paper: Matthew Shunshi Zhang, Bradly C. Stadie, "One-Shot Pruning of Recurrent Neural Networks by Jacobian
Spectrum Evaluation", ICLR 2020. https://arxiv.org/abs/1912.00120

Saliency methods made for feed-forward nets (SNIP, gradient-signal preservation) prune recurrent nets no
better than at random and leave the surviving weights bunched in a few units and gates. This paper instead
keeps what carries information through time: the recurrent Jacobian ``J_t = dh_t/dh_{t-1}``, summarised
cheaply by ``chi = ||J_t 1||_2`` on one mini-batch of 64 sequences over the last 4 steps. Each weight's effect
on ``chi`` is estimated to first order (``|theta * dchi/dtheta|``) and divided by the typical gradient size of
its parameter group, so that the gates' matrices compete fairly; the K weights with the largest normalised
score over the whole recurrent network are kept, once, before training, and the sparse net is then trained
as usual. Here the recurrent layers are ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` (one direction), re-run from
their own weights by :mod:`prunekit.criteria.recurrent`; layers outside them stay dense unless
``others="magnitude"`` (ours).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..criteria.recurrent import jacobian_objective, layer_params, record_inputs, recurrent_modules
from ..errors import ConfigError
from ..graph.trace import model_device, move_to
from ..masks import install_masks_, prunable_weights, select_masks
from ..masks.patterns import get_pattern
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

__all__ = ["RNNJacobianConfig", "jacobian_scores", "dead_units", "run"]


@dataclass(frozen=True)
class RNNJacobianConfig(MethodConfig):
    samples: int = option(64, ge=1)  # sequences in the scoring batch (paper sec. 5: one minibatch of 64 samples)
    steps: int = option(4, ge=1)  # last time steps in chi (paper sec. 5: "only the last 4 steps of the sequence")
    # divide |theta * dchi/dtheta| by the mean |dchi/dtheta| of the weight's group: "gate" = one gate's block
    # of one matrix (paper sec. 4: normalised by the expected gradient magnitude; the grouping is ours, the
    # text at hand does not say it), "tensor" = the whole matrix, "none" = plain first-order saliency
    normalize: Literal["gate", "tensor", "none"] = "gate"
    others: Literal["dense", "magnitude"] = "dense"  # ours: layers outside the recurrent cells (dense in the paper)


def _groups(module: nn.Module) -> int:
    return 4 if isinstance(module, nn.LSTM) else 3 if isinstance(module, nn.GRU) else 1


def jacobian_scores(module: nn.Module, x: torch.Tensor, cfg: RNNJacobianConfig) -> tuple[dict, float]:
    """``({param_name: normalised saliency}, chi)`` for the weight matrices of recurrent ``module`` on ``x``."""
    params = [{k: (v.detach().clone().requires_grad_(True) if v is not None else None)
               for k, v in layer_params(module, k).items()} for k in range(module.num_layers)]
    chi = jacobian_objective(module, x, cfg.steps, params)
    names = [(k, f"weight_{n}_l{k}", p[f"w_{n}"]) for k, p in enumerate(params) for n in ("ih", "hh")]
    weights = [w for _, _, w in names]
    grads = torch.autograd.grad(chi, weights, allow_unused=True) if chi.requires_grad else [None] * len(names)
    out = {}
    for (_, name, w), g in zip(names, grads):
        g = torch.zeros_like(w) if g is None else g
        score = (w.detach() * g).abs()
        if cfg.normalize != "none":
            n = _groups(module) if cfg.normalize == "gate" else 1
            scale = torch.stack([blk.abs().mean() for blk in g.chunk(n, dim=0)])
            scale = torch.where(scale > 0, scale, torch.ones_like(scale)).repeat_interleave(w.shape[0] // n)
            score = score / scale[:, None]
        out[name] = score
    return out, float(chi.detach())


def dead_units(module: nn.Module) -> float:
    """Fraction of hidden units (of all stacked layers) left with no recurrent in-weight in any gate."""
    dead = total = 0
    for k in range(module.num_layers):
        w = getattr(module, f"weight_hh_l{k}").detach()
        alive = (w != 0).reshape(_groups(module), module.hidden_size, -1).any(dim=2).any(dim=0)
        dead, total = dead + int((~alive).sum()), total + alive.numel()
    return dead / total if total else 0.0


@torch.no_grad()
def _chi(modules: dict, seqs: dict, steps: int) -> float:
    with torch.enable_grad():
        return sum(float(jacobian_objective(m, seqs[f], steps).detach()) for f, m in modules.items())


@register_method("rnn-jacobian", config=RNNJacobianConfig, kind="unstructured", needs=("calib",),
                 smoke={"others": "magnitude"}, status="partial",
                 left_out="no fair prunekit-bench table: the bench controls prune Linear/Conv weights only, so the "
                          "matched comparison is benchmarks/rnn_jacobian_check.py; the grouping of the gradient "
                          "normalisation is ours (no reference code); GRU/SNIP entry figures measured on the LSTM",
                 telemetry=Telemetry(
                     keys=("chi_dense", "chi_pruned", "chi_magnitude", "scored_nonzero", "kept_not_by_magnitude",
                           "dead_units", "dead_units_magnitude"),
                     engaged=lambda t: t["scored_nonzero"] > 0 and t["kept_not_by_magnitude"] > 0,
                     what="recurrent-Jacobian saliency choosing the kept recurrent weights",
                     knob="the model needs nn.RNN/LSTM/GRU layers with non-zero recurrent weights and calibration "
                          "sequences longer than one step (calib=[(inputs, targets)], options.steps)"))
def run(ctx: RunContext, cfg: RNNJacobianConfig) -> MethodResult:
    """Score the recurrent weights of ``ctx.model`` by the Jacobian objective on one batch; keep the top K."""
    model, sparsity = ctx.model, ctx.target_value
    ignore = tuple(ctx.ignore)
    modules = {f: m for f, m in recurrent_modules(model).items() if f not in ignore}
    if not modules and cfg.others == "dense":
        raise ConfigError("rnn-jacobian: the model has no nn.RNN/nn.LSTM/nn.GRU layer to prune (others='dense'); "
                          "use a recurrent model, or options.others='magnitude' to prune the other layers by "
                          "magnitude alone")
    inputs = torch.cat([move_to(x, model_device(model)) for x, _ in ctx.calib])[: cfg.samples]
    seqs = record_inputs(model, modules, inputs)
    scores, chi_dense = {}, 0.0
    for fqn, m in modules.items():
        s, chi = jacobian_scores(m, seqs[fqn].float(), cfg)
        chi_dense += chi
        scores.update({f"{fqn}.{n}": v for n, v in s.items()})
    rec = {f: model.get_parameter(f) for f in scores}
    masks = select_masks(scores, get_pattern("element"), global_sparsity=sparsity) if scores else {}
    by_mag = select_masks({f: p.detach().abs() for f, p in rec.items()}, get_pattern("element"),
                          global_sparsity=sparsity) if scores else {}
    differ = sum(int((masks[f] & ~by_mag[f]).sum()) for f in masks)
    nonzero = sum(int((s > 0).sum()) for s in scores.values())
    dense = {f: p.detach().clone() for f, p in rec.items()}
    with torch.no_grad():  # the magnitude control's spectrum and dispersion, for the telemetry
        for f, p in rec.items():
            p.mul_(by_mag[f])
        chi_mag, dead_mag = _chi(modules, seqs, cfg.steps), [dead_units(m) for m in modules.values()]
        for f, p in rec.items():
            p.copy_(dense[f])
    if cfg.others == "magnitude":
        rest = {f: p for f, p in prunable_weights(model, ignore).items() if f not in scores}
        masks.update(select_masks({f: p.detach().abs() for f, p in rest.items()}, get_pattern("element"),
                                  global_sparsity=sparsity) if rest else {})
    if masks:
        install_masks_(model, masks)
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    telemetry = {"chi_dense": chi_dense, "chi_pruned": _chi(modules, seqs, cfg.steps), "chi_magnitude": chi_mag,
                 "scored_nonzero": nonzero, "kept_not_by_magnitude": differ,
                 "dead_units": sum(dead_units(m) for m in modules.values()) / max(1, len(modules)),
                 "dead_units_magnitude": sum(dead_mag) / max(1, len(dead_mag))}
    return MethodResult(model, telemetry=telemetry,
                        info={**telemetry, "sparsity": 1 - kept / total if total else 0.0,
                              "recurrent_weights": sum(p.numel() for p in rec.values())})
