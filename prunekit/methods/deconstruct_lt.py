"""Deconstructed lottery tickets: mask criteria, signed-constant supermasks and learned supermasks.

Paper: "Deconstructing Lottery Tickets: Zeros, Signs, and the Supermask", Hattie Zhou, Janice Lan, Rosanne
Liu, Jason Yosinski. NeurIPS 2019. https://arxiv.org/abs/1905.01067

The paper takes the lottery-ticket recipe apart (train, choose a mask, rewind the survivors, retrain) and
varies each piece. Three pieces are reusable. First, the rule that picks the mask from the initial and
final weights: keeping large final weights is the original choice, but keeping the weights whose
magnitude grew the most works as well, and the weights' movement or a random mask serve as references.
Second, what a rewound ticket needs from its initial values is mostly their sign: survivors reset to a
per-layer constant with their original sign train about as well. Third, masking is a form of training:
a mask picked from the trained weights ("large final, same sign") and laid over the *untrained* network
with signed-constant weights scores far above chance, and a mask learned by gradient descent over frozen
random weights (a "supermask", here with Bernoulli sampling or a top-k selection, both passing the
gradient straight through) does better still.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .._registry import unknown_name_message
from ..errors import ConfigError
from ..masks import get_pattern, install_masks_, prunable_weights, select_masks
from ..train.config import method_train_config
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method
from ..train import fit

log = logging.getLogger(__name__)

__all__ = ["MASK_CRITERIA", "MASK1_ACTIONS", "lt_mask_scores", "lt_masks", "rewind_kept_", "signed_constant_",
           "Supermask", "attach_supermasks", "detach_supermasks", "DeconstructLTConfig", "run"]


def _rank01(x: torch.Tensor) -> torch.Tensor:
    """Each entry's rank in ``x`` scaled to [0, 1] (0 = smallest); ties broken by position."""
    flat = x.flatten()
    ranks = torch.empty_like(flat)
    ranks[flat.argsort(stable=True)] = torch.arange(flat.numel(), dtype=flat.dtype, device=flat.device)
    return (ranks / max(flat.numel() - 1, 1)).reshape(x.shape)


def _same_sign(w_init: torch.Tensor, w_final: torch.Tensor) -> torch.Tensor:
    return torch.sign(w_init) == torch.sign(w_final)


_NEG = float("-inf")

# criterion -> score(w_init, w_final); the mask keeps the highest scores. Scores of -inf are never kept
# before a finite score.
MASK_CRITERIA = {
    "large_final": lambda wi, wf: wf.abs(),
    "small_final": lambda wi, wf: -wf.abs(),
    "large_init": lambda wi, wf: wi.abs(),
    "small_init": lambda wi, wf: -wi.abs(),
    # large in both: the smaller of the two within-layer magnitude ranks
    "large_init_large_final": lambda wi, wf: torch.minimum(_rank01(wi.abs()), _rank01(wf.abs())),
    "small_init_small_final": lambda wi, wf: torch.minimum(_rank01(-wi.abs()), _rank01(-wf.abs())),
    "magnitude_increase": lambda wi, wf: wf.abs() - wi.abs(),
    "movement": lambda wi, wf: (wf - wi).abs(),
    "large_final_same_sign": lambda wi, wf: torch.where(_same_sign(wi, wf), wf.abs(), _NEG),
    "large_final_diff_sign": lambda wi, wf: torch.where(_same_sign(wi, wf), _NEG, wf.abs()),
    "magnitude_increase_same_sign": lambda wi, wf: torch.where(_same_sign(wi, wf), wf.abs() - wi.abs(), _NEG),
    "random": None,  # uniform scores from the caller's generator
}


def lt_mask_scores(criterion: str, w_init: torch.Tensor, w_final: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Scores (keep the highest) of mask ``criterion`` for one layer's initial and final weights.

    Example:
        >>> wi, wf = torch.tensor([0.1, -0.5, 0.4]), torch.tensor([0.6, -0.55, -0.9])
        >>> lt_mask_scores("large_final", wi, wf)
        tensor([0.6000, 0.5500, 0.9000])
        >>> lt_mask_scores("magnitude_increase", wi, wf)    # the first weight grew most
        tensor([0.5000, 0.0500, 0.5000])
    """
    if criterion not in MASK_CRITERIA:
        raise ConfigError(unknown_name_message("mask criterion", criterion, MASK_CRITERIA, "criterion")
                          + "; pick one of these names")
    if w_init.shape != w_final.shape:
        raise ConfigError(f"w_init has shape {tuple(w_init.shape)} but w_final has {tuple(w_final.shape)}; "
                          "pass the same layer's weights at initialisation and after training")
    if criterion == "random":
        return torch.rand(w_final.shape, generator=generator, device=w_final.device)
    return MASK_CRITERIA[criterion](w_init.detach().float(), w_final.detach().float())


def signed_constant_(weight: torch.Tensor, sign_source: torch.Tensor | None = None) -> torch.Tensor:
    """Replace ``weight`` in place by ``sign(sign_source) * std(weight)`` (the layer's signed constant)."""
    src = weight if sign_source is None else sign_source
    with torch.no_grad():
        sigma = weight.float().std().item()
        weight.copy_(torch.sign(src).to(weight.dtype) * sigma)
    return weight


class _BernoulliST(torch.autograd.Function):
    @staticmethod
    def forward(ctx, p):
        return torch.bernoulli(p)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _TopKST(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, keep: int):
        mask = torch.zeros_like(scores)
        if keep > 0:
            mask.view(-1)[torch.topk(scores.flatten(), keep, sorted=False).indices] = 1.0
        return mask

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class Supermask(nn.Module):
    """A parametrization ``weight -> weight * mask(scores)`` with frozen weights and learned scores.

    ``mode="bernoulli"`` samples ``mask ~ Bernoulli(sigmoid(scores))`` in training and thresholds
    ``sigmoid(scores) > 0.5`` in eval; ``mode="topk"`` keeps the ``keep`` highest scores. Both pass the
    gradient straight through the mask. ``rescale`` multiplies by ``numel / kept`` (dynamic weight rescaling).
    """

    def __init__(self, shape, mode: str = "bernoulli", keep: int | None = None, rescale: bool = False,
                 init: torch.Tensor | None = None):
        super().__init__()
        self.mode, self.keep, self.rescale = mode, keep, rescale
        self.scores = nn.Parameter(init.clone() if init is not None else torch.zeros(shape))

    def mask(self) -> torch.Tensor:
        if self.mode == "topk":
            return _TopKST.apply(self.scores, int(self.keep))
        p = torch.sigmoid(self.scores)
        if self.training:
            return _BernoulliST.apply(p)
        return (p > 0.5).to(p.dtype)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        m = self.mask()
        out = weight * m
        if self.rescale:
            out = out * (m.numel() / m.detach().sum().clamp_min(1.0))
        return out


def lt_masks(criterion: str, init: dict[str, torch.Tensor], final: dict[str, torch.Tensor], sparsity: float, *,
             seed: int = 0) -> dict[str, torch.Tensor]:
    """Per-layer masks keeping the highest ``criterion`` scores at ``sparsity`` (exact count per layer)."""
    g = torch.Generator().manual_seed(seed)
    scores = {k: lt_mask_scores(criterion, init[k], final[k], generator=g) for k in final}
    # -inf scores (sign-aware criteria) rank below every finite one; map them to the lowest finite value - 1
    for k, s in scores.items():
        finite = s[torch.isfinite(s)]
        floor = (finite.min() - 1.0) if finite.numel() else torch.tensor(0.0)
        scores[k] = torch.where(torch.isfinite(s), s, floor)
    return select_masks(scores, get_pattern("element"), {k: sparsity for k in scores})


def rewind_kept_(model: nn.Module, init: dict[str, torch.Tensor], fqns, action: str = "init", *,
                 seed: int = 0) -> None:
    """Mask-1 action on the weights ``fqns`` (the others are rewound to ``init``): ``"init"`` (the lottery
    ticket), ``"reinit"`` (fresh values of the same scale), ``"reshuffle"`` (the layer's initial values
    permuted), ``"signed_constant"`` (``sign(w_init) * std(w_init)``)."""
    if action not in MASK1_ACTIONS:
        raise ConfigError(unknown_name_message("mask-1 action", action, MASK1_ACTIONS, "rewind"))
    model.load_state_dict({k: v.clone() for k, v in init.items()}, strict=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for fqn in fqns:
            w = model.get_parameter(fqn)
            if action == "reinit":
                w.copy_((torch.randn(w.shape, generator=g) * init[fqn].float().std()).to(w.dtype))
            elif action == "reshuffle":
                flat = init[fqn].flatten()
                w.copy_(flat[torch.randperm(flat.numel(), generator=g)].reshape(w.shape))
            elif action == "signed_constant":
                signed_constant_(w, init[fqn])


MASK1_ACTIONS = ("init", "reinit", "reshuffle", "signed_constant")


def attach_supermasks(model: nn.Module, fqns, *, mode: str = "topk", sparsity: float = 0.5,
                      rescale: bool = False, seed: int = 0) -> dict[str, Supermask]:
    """Freeze every parameter and put a :class:`Supermask` on each weight in ``fqns`` (scores trainable).

    Build the optimizer afterwards: only the scores require gradients. :func:`detach_supermasks` undoes it.
    """
    from torch.nn.utils import parametrize

    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for fqn in fqns:
        module = model.get_submodule(fqn.rpartition(".")[0])
        w = module.weight
        keep = round((1.0 - sparsity) * w.numel())
        init = torch.rand(w.shape, generator=g) * 0.01  # small positive scores; Bernoulli: p ~ 0.5
        sm = Supermask(w.shape, mode=mode, keep=keep, rescale=rescale, init=init.to(w.device))
        sm.param_order = list(module._parameters)
        parametrize.register_parametrization(module, "weight", sm)
        module.parametrizations.weight.original.requires_grad_(False)
        out[fqn] = sm
    return out


def detach_supermasks(model: nn.Module, masks: dict[str, Supermask]) -> dict[str, torch.Tensor]:
    """Remove the supermasks (weights back to their frozen values, names and order restored, gradients
    re-enabled); returns each layer's final mask: its ``keep`` highest scores."""
    from torch.nn.utils import parametrize

    out = {}
    for fqn, sm in masks.items():
        module = model.get_submodule(fqn.rpartition(".")[0])
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        for name in [n for n in sm.param_order if n in module._parameters]:
            module._parameters[name] = module._parameters.pop(name)
        flat = torch.zeros(sm.scores.numel(), dtype=torch.bool, device=sm.scores.device)
        flat[torch.topk(sm.scores.detach().flatten(), int(sm.keep), sorted=False).indices] = True
        out[fqn] = flat.reshape(sm.scores.shape)
    for p in model.parameters():
        p.requires_grad_(True)
    return out


Criterion = Literal["large_final", "small_final", "large_init", "small_init", "large_init_large_final",
                    "small_init_small_final", "magnitude_increase", "movement", "large_final_same_sign",
                    "large_final_diff_sign", "magnitude_increase_same_sign", "random"]


@dataclass(frozen=True)
class DeconstructLTConfig(MethodConfig):
    variant: Literal["ticket", "supermask", "learned_supermask"] = "ticket"  # sec. 3-4 tickets; sec. 5 supermasks
    criterion: Criterion = "magnitude_increase"  # mask criterion (sec. 2, Fig. 2: with large_final, the best; large_final = the plain lottery ticket)
    rewind: Literal["init", "reinit", "reshuffle", "signed_constant"] = "init"  # mask-1 action (sec. 4)
    supermask_mode: Literal["bernoulli", "topk"] = "bernoulli"  # learned supermask: Bernoulli(sigmoid(s)) (sec. 5); topk is ours
    supermask_lr: float = option(100.0, gt=0)  # SGD lr of the supermask scores (reference README: 100 for FC)
    rescale: bool = False  # dynamic weight rescaling of the learned supermask (sec. 5, optional)
    exempt: tuple[str, ...] = ()  # ours: ("first",) / ("last",) keep those layers dense


def _differs_from_magnitude(masks: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], sparsity: float) -> float:
    """Fraction of the weights kept/pruned differently from per-layer magnitude at the same sparsity."""
    ref = select_masks({k: w.abs() for k, w in weights.items()}, get_pattern("element"),
                       {k: sparsity for k in weights})
    return sum(int((masks[k] != ref[k]).sum()) for k in masks) / max(sum(m.numel() for m in masks.values()), 1)


@register_method("deconstruct-lt", config=DeconstructLTConfig, kind="unstructured", needs=("train",),
                 status="partial", left_out=(
    "mask-0 actions (pruned weights frozen at their initial value instead of zero) are not implemented; "
    "learned Bernoulli supermasks end with the top-k scores (deterministic) instead of a sampled mask"),
    telemetry=Telemetry(keys=("criterion", "differs_from_magnitude"),
                        engaged=lambda t: t["differs_from_magnitude"] > 0,
                        what="a mask other than plain magnitude (the criterion or supermask chose differently)",
                        knob="set options.criterion to one other than 'large_final' (the plain lottery-ticket "
                             "mask), or options.variant='supermask' / 'learned_supermask'"))
def run(ctx: RunContext, cfg: DeconstructLTConfig) -> MethodResult:
    """``ticket``: train ``prune_epochs``, mask by ``criterion``, rewind survivors (``rewind``); the caller's
    fine-tune retrains. ``supermask``: the same training, then the large-final-same-sign mask over the
    *initial* signed-constant weights. ``learned_supermask``: weights frozen at init, scores trained
    ``prune_epochs`` epochs. Masks are per layer at the target sparsity."""
    sparsity = ctx.target_value
    fqns = list(prunable_weights(ctx.model, ctx.ignore, cfg.exempt))
    init = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
    train = method_train_config(ctx, max(1, ctx.prune_epochs))
    if cfg.variant == "learned_supermask":
        sms = attach_supermasks(ctx.model, fqns, mode=cfg.supermask_mode, sparsity=sparsity, rescale=cfg.rescale,
                                seed=ctx.seed)
        try:
            fit(ctx.model, ctx.train_data, train.replace(optimizer="sgd", nesterov=False, lr=cfg.supermask_lr,
                                                         weight_decay=0.0))
        finally:
            masks = detach_supermasks(ctx.model, sms)
        if cfg.rewind != "init":
            rewind_kept_(ctx.model, init, fqns, cfg.rewind, seed=ctx.seed)
        install_masks_(ctx.model, masks, mode="hard")
        criterion, rewind, reference = f"learned_supermask:{cfg.supermask_mode}", cfg.rewind, init
    else:
        fit(ctx.model, ctx.train_data, train)
        final = {k: ctx.model.get_parameter(k).detach().clone() for k in fqns}
        criterion = "large_final_same_sign" if cfg.variant == "supermask" else cfg.criterion
        masks = lt_masks(criterion, {k: init[k] for k in fqns}, final, sparsity, seed=ctx.seed)
        rewind = "signed_constant" if cfg.variant == "supermask" else cfg.rewind
        rewind_kept_(ctx.model, init, fqns, rewind, seed=ctx.seed)
        install_masks_(ctx.model, masks, mode="hard")
        reference = final
    differs = _differs_from_magnitude(masks, {k: reference[k] for k in fqns}, sparsity)
    return MethodResult(ctx.model, info={"variant": cfg.variant, "criterion": criterion, "rewind": rewind,
                                         "sparsity": sparsity},
                        telemetry={"criterion": criterion, "differs_from_magnitude": differs})
