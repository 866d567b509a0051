"""Training-time pieces of the filter methods, as prunekit Callbacks.

Each callback edits gradients or parameters at one hook of the training loop, so it runs in
:func:`prunekit.train.fit`, in Lightning / the Hugging Face Trainer through their adapters, or in a user's own
loop that calls the hooks. They hold references to the tensors they act on, never to the loop.

| callback | method | hook |
|---|---|---|
| :class:`BNScaleL1` | slimming | sub-gradient ``s*sign(gamma)`` added after backward |
| :class:`BNScaleISTA` | bn-ista | proximal gradient step on gamma (its own optimizer) after backward |
| :class:`APGGates` | sss | accelerated proximal gradient on channel gates (the gates' own optimizer) |
| :class:`SoftFilterMask` | sfp | zero the lowest-norm filters each epoch, keep training them |
| :class:`Centripetal` | csgd | cluster-mean gradient plus a pull toward the cluster mean |
| :class:`HardFilterMask` | dropnet, gate-decorator | keep chosen channels at exactly zero |
| :class:`DynamicFilterMask` | gdp | compute with masked filters, update the dense ones, re-select globally |
| :class:`GateTaylor` / :class:`GateSGD` | gate-decorator | Taylor importance on gates; gate updates with L1 |
| :class:`ChannelGroupLasso` | oicsr | group-lasso sub-gradient over each channel's out- (and in-) weights |
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch
from torch import nn

from ..train.callbacks import Callback
from ._filter_common import (
    ChannelGates, apg_nag_step, centripetal_gradient, filter_norms, global_keep_masks, lowest, soft_threshold,
    weight_scores,
)

log = logging.getLogger(__name__)

__all__ = ["BNScaleL1", "BNScaleISTA", "APGGates", "SoftFilterMask", "Centripetal", "HardFilterMask",
           "DynamicFilterMask", "GateTaylor", "GateSGD", "FreezeExcept", "ChannelGroupLasso", "channel_slices",
           "channel_group_norms", "current_lr"]


def current_lr(optimizer, param: torch.Tensor | None = None, default: float = 0.1) -> float:
    """The learning rate the optimizer applies to ``param`` (its group's ``lr``), or of group 0."""
    if optimizer is None:
        return default
    for group in optimizer.param_groups:
        if param is None or any(p is param for p in group["params"]):
            return float(group["lr"])
    return float(optimizer.param_groups[0]["lr"])


class BNScaleL1(Callback):
    """Network slimming's sparsity term: adds ``strength * sign(gamma)`` to every BN scale's gradient.

    That is the sub-gradient of ``strength * sum |gamma|`` added to the loss, applied after backward so it
    works with any loss and any optimizer.

    Example:
        >>> bn = nn.BatchNorm1d(2); bn.weight.data = torch.tensor([0.5, -0.2]); bn.weight.grad = torch.zeros(2)
        >>> BNScaleL1([bn], strength=0.1).on_after_backward(None); bn.weight.grad.tolist()
        [0.10000000149011612, -0.10000000149011612]
    """

    def __init__(self, bns: Sequence[nn.Module], strength: float = 1e-4):
        self.bns = list(bns)
        self.strength = float(strength)

    def penalty(self) -> float:
        return self.strength * sum(float(bn.weight.detach().abs().sum()) for bn in self.bns)

    def on_after_backward(self, state) -> None:
        for bn in self.bns:
            w = bn.weight
            if w.grad is None:
                w.grad = torch.zeros_like(w)
            w.grad.add_(torch.sign(w.detach()), alpha=self.strength)


class BNScaleISTA(Callback):
    """ISTA on BN scales (bn-ista): ``gamma <- prox(gamma - lr * grad, lr * rho * lambda_l)`` at every step.

    The callback is the scales' optimizer, as in the paper (plain proximal gradient, no momentum or weight
    decay on ``gamma``): it updates them after backward with the loop's current learning rate and clears their
    gradients so the loop's optimizer skips them. ``weights`` gives each BN its cost factor ``lambda_l`` (1 when
    missing). The step leaves exact zeros, which is what marks a channel as removable.
    """

    def __init__(self, bns: dict[str, nn.Module], rho: float, weights: dict[str, float] | None = None,
                 lr: float | None = None):
        self.bns = dict(bns)
        self.rho = float(rho)
        self.weights = {k: float(v) for k, v in (weights or {}).items()}
        self.lr = lr

    def on_after_backward(self, state) -> None:
        opt = getattr(state, "optimizer", None)
        with torch.no_grad():
            for fqn, bn in self.bns.items():
                w = bn.weight
                lr = self.lr if self.lr is not None else current_lr(opt, w)
                grad = w.grad if w.grad is not None else torch.zeros_like(w)
                w.copy_(soft_threshold(w - lr * grad, lr * self.rho * self.weights.get(fqn, 1.0)))
                w.grad = None

    def zero_fraction(self) -> float:
        n = sum(bn.weight.numel() for bn in self.bns.values())
        z = sum(int((bn.weight == 0).sum()) for bn in self.bns.values())
        return z / max(n, 1)


class APGGates(Callback):
    """SSS: channel gates trained by accelerated proximal gradient with an L1 weight ``strength``.

    The gates (a :class:`ChannelGates`) are not in the loop's optimizer; this callback is their optimizer.
    After backward it takes one APG step per gate with the loop's current learning rate (or ``lr``) and
    clears the gate gradients. Gates stay non-negative and reach exact zeros.
    """

    def __init__(self, gates: ChannelGates, strength: float, momentum: float = 0.9, lr: float | None = None):
        self.gates = gates
        self.strength = float(strength)
        self.momentum = float(momentum)
        self.lr = lr
        self.velocity = {k: torch.zeros_like(g) for k, g in gates.gates.items()}

    def on_after_backward(self, state) -> None:
        lr = self.lr if self.lr is not None else current_lr(getattr(state, "optimizer", None))
        with torch.no_grad():
            for fqn, g in self.gates.gates.items():
                grad = g.grad if g.grad is not None else torch.zeros_like(g)
                new, self.velocity[fqn] = apg_nag_step(
                    g.detach(), grad, self.velocity[fqn], lr=lr, strength=self.strength, momentum=self.momentum
                )
                g.copy_(new)
        self.gates.zero_grad()

    def zero_fraction(self) -> float:
        """Fraction of all gates that are exactly 0 (structures the proximal step switched off)."""
        n = sum(g.numel() for g in self.gates.gates.values())
        return sum(int((g == 0).sum()) for g in self.gates.gates.values()) / max(n, 1)


class SoftFilterMask(Callback):
    """Soft filter pruning: every ``every`` epochs zero the ``n_prune`` lowest-scoring filters of each layer.

    Zeroed filters keep their gradients, so training may grow them back before the next re-selection.
    ``criterion`` names a registered weight criterion (``"l2"``: filter norm, ``"fpgm"``: distance to the
    other filters; :func:`~prunekit.methods._filter_common.weight_scores`). ``tied`` lists layers whose
    filters are one channel (e.g. joined by a residual add): their scores are summed and the same indices
    zeroed in all of them; ``n_prune`` is keyed by the first layer of each tied set. A selection happens at
    the end of every ``every``-th epoch and at the end of the last one (when the loop says which that is).
    ``history`` keeps the zeroed indices of every selection, ``{fqn: tensor}`` per selection.
    """

    def __init__(self, layers: dict[str, nn.Module], n_prune: dict[str, int], criterion: str = "l2",
                 tied: Sequence[Sequence[str]] | None = None, every: int = 1):
        self.layers = dict(layers)
        self.n_prune = dict(n_prune)
        self.criterion = criterion
        self.every = int(every)
        in_tied = {f for t in (tied or ()) for f in t}
        self.tied = [list(t) for t in (tied or ())] + [[f] for f in self.layers if f not in in_tied]
        self.history: list[dict[str, torch.Tensor]] = []

    def scores(self, weight: torch.Tensor) -> torch.Tensor:
        return weight_scores(weight, self.criterion)

    def group_scores(self, members: list[str]) -> torch.Tensor:
        """The summed filter scores of one tied set (a subclass may score each set its own way)."""
        return sum(self.scores(self.layers[f].weight) for f in members)

    def apply(self) -> dict[str, torch.Tensor]:
        chosen = {}
        with torch.no_grad():
            for members in self.tied:
                score = self.group_scores(members)
                idx = lowest(score, self.n_prune.get(members[0], 0))
                for f in members:
                    mod = self.layers[f]
                    mod.weight[idx.to(mod.weight.device)] = 0.0
                    if getattr(mod, "bias", None) is not None:
                        mod.bias[idx.to(mod.bias.device)] = 0.0
                    chosen[f] = idx
        self.history.append(chosen)
        return chosen

    def regrown(self) -> int:
        """Filters zeroed at one selection and not chosen at the next: training grew them back."""
        n = 0
        for a, b in zip(self.history, self.history[1:]):
            for f, idx in a.items():
                n += len(set(idx.tolist()) - set(b.get(f, idx).tolist()))
        return n

    def on_epoch_end(self, state) -> None:
        total = getattr(getattr(state, "config", None), "epochs", None)
        if (state.epoch + 1) % self.every == 0 or (total is not None and state.epoch + 1 == total):
            self.apply()


class Centripetal(Callback):
    """C-SGD: each clustered tensor's gradient becomes its cluster-mean gradient + ``eps * (W - cluster mean)``.

    ``entries`` are ``(tensor, cluster_average_matrix, eps)``; tensors have the filter dim first (conv and BN
    parameters of one layer share the same matrix). Weight decay stays the optimizer's job.
    """

    def __init__(self, entries: Sequence[tuple[torch.Tensor, torch.Tensor, float]]):
        self.entries = list(entries)

    def on_after_backward(self, state) -> None:
        with torch.no_grad():
            for p, avg, eps in self.entries:
                grad = p.grad if p.grad is not None else torch.zeros_like(p)
                p.grad = centripetal_gradient(p.detach(), grad, avg, eps)


class HardFilterMask(Callback):
    """Keeps the masked output channels of some tensors at exactly zero (re-applied after every step).

    ``tensors`` is ``{name: (tensor, keep_mask)}`` with the channel dim first; ``set_mask`` changes a mask
    and zeros at once. Used for DropNet's dropped filters and Gate Decorator's pruned gates.
    """

    def __init__(self, tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None):
        self.tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = dict(tensors or {})

    def set_mask(self, name: str, tensor: torch.Tensor, keep: torch.Tensor) -> None:
        self.tensors[name] = (tensor, keep.to(torch.bool))
        self.apply()

    def apply(self) -> None:
        with torch.no_grad():
            for t, keep in self.tensors.values():
                t[~keep.to(t.device)] = 0.0

    def on_after_backward(self, state) -> None:
        for t, keep in self.tensors.values():
            if t.grad is not None:
                t.grad[~keep.to(t.device)] = 0.0

    def on_after_step(self, state) -> None:
        self.apply()


class DynamicFilterMask(Callback):
    """GDP: one global keep-mask over the filters of many layers, re-estimated every ``update_every`` steps.

    The forward and backward use the masked filters (``W * m``); the optimizer then updates the dense
    weights with that gradient, so a masked filter keeps learning and can re-enter at the next re-estimate.
    ``saliency(weight) -> [n_filters]`` scores filters (default: L1 norm); scores are divided by their
    layer's mean before the global ranking. After the first estimate, ``updates`` counts re-estimates,
    ``flips`` the 0->1 changes of the mask (filters that came back) and ``changed`` every position that
    changed either way.
    """

    def __init__(self, layers: dict[str, nn.Module], n_keep: int, update_every: int = 50,
                 saliency: Callable[[torch.Tensor], torch.Tensor] | None = None, static: bool = False,
                 choose: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None):
        self.layers = dict(layers)
        self.n_keep = int(n_keep)
        self.choose = choose  # {layer: scores} -> {layer: keep mask}; replaces the n_keep count budget
        self.update_every = int(update_every)
        self.saliency = saliency or (lambda w: filter_norms(w, 1))
        self.static = static
        self.masks: dict[str, torch.Tensor] = {}
        self.flips = 0
        self.updates = -1  # the first estimate (below) is not a re-estimate
        self.changed = 0
        self._dense: dict[str, torch.Tensor] = {}
        self.update_masks()

    def update_masks(self) -> None:
        names = list(self.layers)
        scores = [self.saliency(self.layers[n].weight.detach()) for n in names]
        if self.choose is not None:
            chosen = self.choose(dict(zip(names, scores)))
            new = [chosen[n] for n in names]
        else:
            new = global_keep_masks(scores, self.n_keep, normalize=True)
        for n, m in zip(names, new):
            if n in self.masks:
                self.flips += int((m & ~self.masks[n]).sum())
                self.changed += int((m != self.masks[n]).sum())
            self.masks[n] = m
        self.updates += 1

    def _swap_in_masked(self) -> None:
        with torch.no_grad():
            for n, mod in self.layers.items():
                self._dense[n] = mod.weight.detach().clone()
                mod.weight[~self.masks[n]] = 0.0

    def _restore_dense(self) -> None:
        with torch.no_grad():
            for n, mod in self.layers.items():
                if n in self._dense:
                    mod.weight.copy_(self._dense.pop(n))

    def on_batch_start(self, state) -> None:
        self._swap_in_masked()

    def on_after_backward(self, state) -> None:
        self._restore_dense()

    def on_after_step(self, state) -> None:
        if not self.static and self.update_every > 0 and (state.step + 1) % self.update_every == 0:
            self.update_masks()

    def on_train_end(self, state) -> None:
        self._restore_dense()

    def apply(self) -> None:
        """Zero the masked filters for good (before the final cut)."""
        with torch.no_grad():
            for n, mod in self.layers.items():
                mod.weight[~self.masks[n]] = 0.0
                if getattr(mod, "bias", None) is not None:
                    mod.bias[~self.masks[n]] = 0.0


class GateTaylor(Callback):
    """Gate Decorator's importance: accumulates ``|g * dL/dg|`` per gate over the batches it sees."""

    def __init__(self, gates: ChannelGates):
        self.gates = gates
        self.reset()

    def reset(self) -> None:
        self.scores = {k: torch.zeros_like(g.detach()) for k, g in self.gates.gates.items()}

    def on_after_backward(self, state) -> None:
        for k, g in self.gates.gates.items():
            if g.grad is not None:
                self.scores[k] += (g.detach() * g.grad).abs()


class GateSGD(Callback):
    """Plain SGD on channel gates with an L1 term ``l1 * sign(g)``; masked gates (``keep`` False) stay 0."""

    def __init__(self, gates: ChannelGates, lr: float | None = None, l1: float = 0.0,
                 keep: dict[str, torch.Tensor] | None = None):
        self.gates = gates
        self.lr = lr
        self.l1 = float(l1)
        self.keep = keep if keep is not None else {}

    def on_after_step(self, state) -> None:
        lr = self.lr if self.lr is not None else current_lr(getattr(state, "optimizer", None))
        with torch.no_grad():
            for k, g in self.gates.gates.items():
                grad = g.grad if g.grad is not None else torch.zeros_like(g)
                g.sub_(lr * (grad + self.l1 * torch.sign(g)))
                if k in self.keep:
                    g[~self.keep[k]] = 0.0
        self.gates.zero_grad()


class FreezeExcept(Callback):
    """Trains only ``trainable`` tensors: every other parameter's gradient is dropped after backward.

    A dropped (``None``) gradient makes torch optimizers skip the parameter entirely (no weight decay, no
    momentum), so the frozen weights stay exactly as they were. Used for Gate Decorator's tick phase.
    """

    def __init__(self, model: nn.Module, trainable: Sequence[torch.Tensor]):
        keep = {id(t) for t in trainable}
        self.frozen = [p for p in model.parameters() if id(p) not in keep]

    def on_after_backward(self, state) -> None:
        for p in self.frozen:
            p.grad = None


def channel_slices(model: nn.Module, group, roles: Sequence[str] = ("producer", "consumer")) -> list:
    """The weight slices of a channel group (an engine ``Group``): ``[(param, dim, channel index per position)]``
    for every Conv/Linear ``weight`` member whose role is in ``roles`` (``"producer"``: the filters that output
    the channels; ``"consumer"``: the next layers' input columns reading them). Positions outside the group
    carry channel -1."""
    params = dict(model.named_parameters())
    out = []
    for m in group.members:
        if m.role not in roles or not m.fqn.endswith(".weight") or m.fqn not in params:
            continue
        p = params[m.fqn]
        if p.dim() < 2:
            continue
        out.append((p, m.dim, torch.as_tensor(m.channel, dtype=torch.long)))
    return out


def channel_group_norms(slices: list, width: int) -> torch.Tensor:
    """Squared L2 norm of every channel's weights over all ``slices`` (``[width]``, float64): for OICSR's
    out-in groups, ``||W_l[c]||^2 + ||W_{l+1}[:, c]||^2`` summed over every coupled layer."""
    total = torch.zeros(width, dtype=torch.float64)
    for p, dim, chan in slices:
        per_pos = p.detach().double().pow(2).transpose(0, dim).reshape(p.shape[dim], -1).sum(1).cpu()
        keep = chan >= 0
        total.index_add_(0, chan[keep], per_pos[keep])
    return total


class ChannelGroupLasso(Callback):
    """Group lasso over channels: adds the sub-gradient of ``strength * sum_c ||g_c||_2`` after backward, where
    ``g_c`` gathers every weight slice of channel ``c`` (``groups``: ``[(width, slices)]`` from
    :func:`channel_slices`; OICSR's out-in group when the slices hold the producers and the consumers, a plain
    filter group lasso with the producers only). ``d||g_c|| / dW = W / ||g_c||`` on the slice's entries.

    Example:
        >>> w = nn.Parameter(torch.tensor([[3.0, 0.0], [0.0, 4.0]])); w.grad = torch.zeros(2, 2)
        >>> ChannelGroupLasso([(2, [(w, 0, torch.tensor([0, 1]))])], strength=1.0).on_after_backward(None)
        >>> w.grad.tolist()
        [[1.0, 0.0], [0.0, 1.0]]
    """

    def __init__(self, groups: Sequence, strength: float, eps: float = 1e-12):
        self.groups = list(groups)
        self.strength, self.eps = float(strength), float(eps)

    def on_after_backward(self, state) -> None:
        if self.strength == 0:
            return
        with torch.no_grad():
            for width, slices in self.groups:
                inv = channel_group_norms(slices, width).sqrt().clamp_min(self.eps).reciprocal()
                for p, dim, chan in slices:
                    scale = torch.zeros(p.shape[dim], dtype=p.dtype, device=p.device)
                    keep = chan >= 0
                    scale[keep] = inv[chan[keep]].to(p.dtype).to(p.device) * self.strength
                    shape = [1] * p.dim()
                    shape[dim] = -1
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    p.grad.add_(p.detach() * scale.reshape(shape))
