"""Global Sparse Momentum SGD (GSM).

Paper: "Global Sparse Momentum SGD for Pruning Very Deep Neural Networks", Xiaohan Ding, Guiguang Ding,
Xiangxin Zhou, Yuchen Guo, Jungong Han, Ji Liu. NeurIPS 2019. https://arxiv.org/abs/1909.12778

GSM prunes by changing what the optimizer does rather than by cutting. Given only a global compression
ratio C, at most Q = N / C weights may survive. After each backward pass every weight is scored by the
first-order Taylor estimate of the loss change if it were removed, |w * dL/dw|, and the Q best across the
whole network keep their loss gradient; all other weights have their loss gradient zeroed, so the only
force on them is weight decay, amplified by a large momentum, which drives them steadily towards zero. The
active set is recomputed every step, so a weight can earn its way back; the layer-wise sparsity is never
set by hand but follows from the global ranking. When training ends, everything outside the top Q is set
to exactly zero; the paper needs no fine-tuning after that.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..masks import install_masks_, prunable_weights, select_masks, get_pattern
from ..train.callbacks import Callback, TrainState
from ..train.config import method_train_config
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method
from ..train import fit

log = logging.getLogger(__name__)

__all__ = ["gsm_active_masks", "GSM", "GSMConfig", "run"]


def gsm_active_masks(weights: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], keep: int
                     ) -> dict[str, torch.Tensor]:
    """Bool masks of the ``keep`` weights with the largest ``|w * g|`` across all layers (ties by position).

    Example:
        >>> w = {"a": torch.tensor([1.0, 4.0]), "b": torch.tensor([2.0])}
        >>> g = {"a": torch.tensor([0.5, 0.01]), "b": torch.tensor([1.0])}   # |w*g| = .5, .04, 2
        >>> {k: v.tolist() for k, v in gsm_active_masks(w, g, 2).items()}
        {'a': [True, False], 'b': [True]}
    """
    names = list(weights)
    scores = torch.cat([(weights[n].detach() * grads[n]).abs().flatten().float() for n in names])
    flat = torch.zeros_like(scores, dtype=torch.bool)
    if keep > 0:
        flat[torch.topk(scores, min(keep, scores.numel()), sorted=False).indices] = True
    out, start = {}, 0
    for n in names:
        k = weights[n].numel()
        out[n] = flat[start:start + k].reshape(weights[n].shape)
        start += k
    return out


class GSM(Callback):
    """Global sparse momentum inside any :func:`prunekit.train.fit` run (use SGD with a large momentum).

    Each step, after the backward pass, only the ``keep`` weights with the largest ``|w * grad|`` across
    the pruned layers keep their gradient; the others' gradient is zeroed so only weight decay moves them.
    ``sparsity`` gives ``keep = round((1 - sparsity) * N)``. With ``harden_at_end`` the final top-``keep``
    weights by magnitude are kept with hard masks and all others become exactly zero.
    ``active_changes`` counts weights entering the active set, per step; ``left`` marks every weight that
    was active at some step and passive at a later one; ``masked`` / ``updates`` count the gradient entries
    zeroed / seen over all steps.
    """

    def __init__(self, sparsity: float, *, ignore=(), exempt=(), harden_at_end: bool = True):
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
            raise ConfigError(f"sparsity={sparsity!r} must be a float in [0, 1) (fraction of weights that end "
                              "at zero), e.g. 0.9 for compression ratio C = 10")
        self.sparsity, self.ignore, self.exempt, self.harden_at_end = float(sparsity), ignore, exempt, harden_at_end
        self.params: dict[str, nn.Parameter] = {}
        self.keep = 0
        self._active: dict[str, torch.Tensor] | None = None
        self.active_changes: list[int] = []
        self.left: dict[str, torch.Tensor] = {}
        self.masked = 0
        self.updates = 0
        self.near_zero = 0.0  # fraction of |w| < 1e-3 when training ended, before the final cut

    def on_train_start(self, state: TrainState) -> None:
        self.params = prunable_weights(state.model, self.ignore, self.exempt)
        self.keep = round((1.0 - self.sparsity) * sum(p.numel() for p in self.params.values()))

    def on_after_backward(self, state: TrainState) -> None:
        live = {k: p for k, p in self.params.items() if p.grad is not None}
        if not live:
            return
        active = gsm_active_masks(live, {k: p.grad for k, p in live.items()}, self.keep)
        if self._active is not None:
            self.active_changes.append(sum(int((active[k] & ~self._active[k]).sum()) for k in active
                                           if k in self._active))
            for k in active:
                if k in self._active:
                    gone = self._active[k] & ~active[k]
                    self.left[k] = gone if k not in self.left else self.left[k] | gone
        self._active = active
        self.masked += sum(int((~a).sum()) for a in active.values())
        self.updates += sum(a.numel() for a in active.values())
        with torch.no_grad():
            for k, p in live.items():
                p.grad.mul_(active[k])

    def final_masks(self) -> dict[str, torch.Tensor]:
        """Global top-``keep`` by magnitude: the weights GSM lets survive."""
        scores = {k: p.detach().abs() for k, p in self.params.items()}
        return select_masks(scores, get_pattern("element"), global_sparsity=self.sparsity)

    def on_train_end(self, state: TrainState) -> None:
        numel = sum(p.numel() for p in self.params.values())
        self.near_zero = sum(int((p.detach().abs() < 1e-3).sum()) for p in self.params.values()) / max(numel, 1)
        if self.harden_at_end:
            install_masks_(state.model, self.final_masks(), mode="hard")


@dataclass(frozen=True)
class GSMConfig(MethodConfig):
    momentum: float = option(0.99, ge=0, lt=1)  # SGD momentum (reference code, gsm_lottery_ticket_lenet300.py)
    weight_decay: float = option(5e-4, ge=0)  # the only force on passive weights (reference code: 5e-4)
    lr: float | None = option(None, gt=0)  # None: the train config's lr (reference code: 1e-2)
    exempt: tuple[str, ...] = ()  # ours: ("first",) / ("last",) keep those layers dense


@register_method("gsm", config=GSMConfig, kind="unstructured", needs=("train",),
                 telemetry=Telemetry(keys=("steps", "masked_fraction", "left_active", "passive_shrink_per_step",
                                           "near_zero_before_cut"),
                                     engaged=lambda t: t["masked_fraction"] > 0 and t["passive_shrink_per_step"] > 0,
                                     what="momentum updates of the passive weights masked so that only weight "
                                          "decay moved them",
                                     knob="raise options.weight_decay (passive weights decay only through it) and "
                                          "give it steps (prune_epochs)"))
def run(ctx: RunContext, cfg: GSMConfig) -> MethodResult:
    """Train ``ctx.prune_epochs`` with GSM (SGD, momentum 0.99), then zero everything outside the top Q."""
    train = method_train_config(ctx, max(1, ctx.prune_epochs), optimizer="sgd", nesterov=False, momentum=cfg.momentum,
                         weight_decay=cfg.weight_decay, **({"lr": cfg.lr} if cfg.lr is not None else {}))
    cb = GSM(ctx.target_value, ignore=ctx.ignore, exempt=cfg.exempt)
    fit(ctx.model, ctx.train_data, train, callbacks=[cb])
    telemetry = {"steps": len(cb.active_changes) + (cb._active is not None),
                 "masked_fraction": cb.masked / max(cb.updates, 1),
                 "left_active": sum(int(v.sum()) for v in cb.left.values()),
                 "passive_shrink_per_step": train.lr * cfg.weight_decay / (1 - cfg.momentum),
                 "near_zero_before_cut": cb.near_zero}
    return MethodResult(ctx.model, info={"sparsity": ctx.target_value, "keep": cb.keep,
                                         "near_zero_before_cut": cb.near_zero}, telemetry=telemetry)
