"""Hinge: group sparsity on the columns of a 1x1 matrix after each conv; zero columns prune or decompose it.

Paper: Yawei Li, Shuhang Gu, Christoph Mayer, Luc Van Gool, Radu Timofte, "Group Sparsity: The Hinge Between
Filter Pruning and Decomposition for Network Compression", CVPR 2020. https://arxiv.org/abs/2003.08935

The paper writes a convolution followed by a 1x1 matrix ``A`` as ``A (W * x)``. Column ``j`` of ``A`` is the
only way filter ``j`` of ``W`` reaches the output, so driving whole columns of ``A`` to zero with a group
sparsity penalty makes filters of ``W`` removable. When ``W``'s outputs can be cut (a plain conv whose output
the next layer reads), the next layer itself plays ``A``: its input-channel columns are the groups, and a zero
column removes a filter of ``W`` -- filter pruning. When they cannot (the last conv of a residual block feeds
the shared sum), ``W`` is first split by SVD into basis filters and an explicit 1x1 ``A``; a zero column of
that ``A`` removes a basis filter -- a low-rank decomposition. One penalty, two outcomes: the hinge. Training
starts from the trained model and alternates an SGD step on the task loss with a proximal step on every
group, ``a_j <- a_j max(0, 1 - lr * reg / ||a_j||)`` (the L2,1 prox), columns whose norm falls below a
threshold being set to zero. The zero columns and the filters they read are removed; a decomposed ``A`` is
folded back into its conv when the folded conv is smaller, and stays a real 1x1 layer otherwise.

Here the groups are the engine's channel groups (:func:`~._filter_common.filter_groups`): a group with one
producing conv is scored by the norms of its consumers' input columns (all consumers of the group together);
a group tied by a residual sum is left whole and each of its producing convs becomes a :class:`HingeConv`
(SVD-initialised basis + 1x1 ``A``, the paper's ``svd2``), whose inner basis->A group is then scored like any
other. The paper ends the sparsity phase once the compression ratio reaches its target (``stop_limit``): with
``stop_at_target`` (default) the proximal steps stop as soon as removing the zero columns alone meets the
MAC/parameter target, so a strong ``reg`` does not drive the model far past it (zero columns are always
removed: their filters no longer reach the output); training goes on without them to the end of the epochs.
The paper's regulariser annealing and layer balancing are not reproduced: after the proximal training the cut
removes every zero column and then (ours, reported as ``topped_up``) the smallest remaining column norms,
globally, until the target is met.

Telemetry: proximal steps taken (``stopped_at``: the step at which the zero columns met the target, None when they
never did), columns exactly zero before the cut (``zero_columns``: the paper's removal),
channels the ranking added (``topped_up``), basis filters removed inside decomposed layers and how many of
those layers stayed split. The mechanism engaged when a proximal step zeroed at least one column.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..surgery.factorize import HingeConv
from ..train import fit
from ..train.callbacks import Callback
from ..train.config import method_train_config
from ._config import MethodConfig, option
from ._filter_common import _graph, cut_to_target, filter_groups, removal_cost, require_prune_epochs
from ._regularizers import current_lr
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["HingeConfig", "HingeConv", "ColumnGroups", "HingeProx", "run"]


@dataclass(frozen=True)
class HingeConfig(MethodConfig):
    reg: float = option(2e-4, ge=0)  # group-sparsity factor (reference scripts hinge_*.sh: 2e-4)
    threshold: float = option(5e-3, ge=0)  # columns with a smaller norm are zeroed (reference scripts: 5e-3)
    decompose_residual: bool = True  # residual-sum convs split by SVD into basis + 1x1 A (paper sec. 3, svd2)
    stop_at_target: bool = True  # proximal steps end once the zero columns meet the target (paper: stop_limit)


# ------------------------------------------------------------------------------------- the decomposition path
# ----------------------------------------------------------------------------------- column groups and the prox
class ColumnGroups:
    """The columns of ``A`` for every scored channel group: the input-channel slices of its consumers.

    ``members[key]`` lists ``(weight tensor, channel of each input position)``; the norm of channel ``j`` is the
    L2 norm of every consumer's input columns mapped to ``j`` together.
    """

    def __init__(self, members: dict[str, list[tuple[torch.Tensor, torch.Tensor]]], widths: dict[str, int]):
        self.members, self.widths = members, widths

    @classmethod
    def of(cls, model: nn.Module, groups) -> "ColumnGroups":
        mods = dict(model.named_modules())
        members, widths = {}, {}
        for g in groups:
            cols = []
            for m in g.group.members:
                mod_fqn, _, pname = m.fqn.rpartition(".")
                mod = mods.get(mod_fqn)
                if (m.role == "consumer" and m.dim == 1 and pname == "weight"
                        and isinstance(mod, (nn.Conv2d, nn.Linear)) and getattr(mod, "groups", 1) == 1):
                    cols.append((mod.weight, torch.as_tensor(m.channel, dtype=torch.long)))
            if cols:
                members[g.key], widths[g.key] = cols, g.width
        return cls(members, widths)

    def norms(self) -> dict[str, torch.Tensor]:
        out = {}
        for key, cols in self.members.items():
            sq = torch.zeros(self.widths[key], dtype=torch.float64)
            for w, ch in cols:
                per_pos = w.detach().double().cpu().transpose(0, 1).reshape(w.shape[1], -1).pow(2).sum(1)
                keep = ch >= 0
                sq.index_add_(0, ch[keep], per_pos[keep])
            out[key] = sq.sqrt()
        return out

    def zero(self) -> dict[str, "np.ndarray"]:
        """``{group key: indices of the channels whose columns are exactly zero}``."""
        return {k: (n == 0).nonzero().flatten().numpy() for k, n in self.norms().items()}

    @torch.no_grad()
    def zero_(self, channels: dict) -> None:
        """Set the columns of ``{group key: channel indices}`` to zero (keeps removed filters removed)."""
        for key, idx in channels.items():
            if len(idx):
                for w, ch in self.members[key]:
                    w[:, torch.isin(ch, torch.as_tensor(idx, dtype=torch.long)).to(w.device)] = 0.0

    @torch.no_grad()
    def prox_(self, t: float, threshold: float = 0.0) -> int:
        """One group soft-threshold ``a_j <- a_j max(0, 1 - t / ||a_j||)``, then columns below ``threshold``
        set to 0. Returns how many columns are exactly zero afterwards."""
        zero = 0
        for key, norm in self.norms().items():
            f = torch.clamp(1 - t / norm.clamp_min(1e-300), min=0.0)
            f[norm * f < threshold] = 0.0
            zero += int((f == 0).sum())
            for w, ch in self.members[key]:
                scale = torch.ones(w.shape[1], dtype=torch.float64)
                scale[ch >= 0] = f[ch[ch >= 0]]
                w.mul_(scale.to(w.device, w.dtype).reshape(1, -1, *([1] * (w.dim() - 2))))
        return zero


class HingeProx(Callback):
    """The proximal step of the paper's PG optimiser, after every optimizer step: ``t = lr * reg``.

    ``met``: called with ``{group key: zero channel indices}`` after each step; once it returns True the
    proximal steps stop (``stopped_at`` holds the step), as the paper's sparsity phase ends at its target, and
    the columns zero then are held at zero for the rest of the training (their filters are pruned from there
    on; the SGD steps would otherwise grow them back)."""

    def __init__(self, columns: ColumnGroups, reg: float, threshold: float,
                 met: Callable[[dict], bool] | None = None):
        self.columns, self.reg, self.threshold, self.met = columns, float(reg), float(threshold), met
        self.steps = 0
        self.zero = 0
        self.stopped_at: int | None = None
        self._held: dict = {}

    def on_after_step(self, state) -> None:
        if self.stopped_at is not None:
            self.columns.zero_(self._held)
            return
        lr = current_lr(getattr(state, "optimizer", None))
        self.zero = self.columns.prox_(lr * self.reg, self.threshold)
        self.steps += 1
        if self.zero and self.met is not None:
            zero = self.columns.zero()
            if self.met(zero):
                self.stopped_at, self._held = self.steps, zero


def decompose_(model: nn.Module, groups) -> list[str]:
    """Replace every Conv2d producing a residual-tied group (several producers) by its :class:`HingeConv`."""
    mods = dict(model.named_modules())
    done = []
    for g in groups:
        if len(g.convs) < 2:
            continue
        for f in g.convs:
            if isinstance(mods[f], nn.Conv2d) and mods[f].groups == 1 and f not in done:
                model.set_submodule(f, HingeConv.from_conv(mods[f]))
                done.append(f)
    return done


def fold_smaller_(model: nn.Module, fqns) -> int:
    """Fold each :class:`HingeConv` into one conv when that has fewer parameters; returns how many stay split."""
    split = 0
    for f in fqns:
        h = model.get_submodule(f)
        if h.folded_params() <= h.split_params():
            model.set_submodule(f, h.fold())
        else:
            split += 1
    return split


@register_method(
    "hinge", config=HingeConfig, kind="structured", needs=("train",), status="partial", left_out=(
        "the paper's annealing of the regularisation factor and layer balancing of the regulariser (its stop at "
        "the target ratio is stop_at_target; when the zero columns fall short, the cut tops up the smallest "
        "column norms globally, reported as topped_up), and its distillation fine-tune (the caller's fine-tune "
        "follows the cut)"),
    telemetry=Telemetry(
        keys=("prox_steps", "stopped_at", "zero_columns", "removed_channels", "topped_up", "basis_removed",
              "layers_split"),
        engaged=lambda t: t["zero_columns"] >= 1,
        what="proximal group-sparsity steps zeroing columns of A (filters / basis filters no longer used)",
        knob="raise options.reg or options.threshold, or prune_epochs (the proximal steps zero columns over "
             "training)"))
def run(ctx: RunContext, cfg: HingeConfig) -> MethodResult:
    require_prune_epochs(ctx, "hinge")
    model = ctx.model
    g0 = _graph(model, ctx)
    dense_macs, dense_params = g0.macs(), sum(p.numel() for p in model.parameters())
    dense = g0.macs() if ctx.target_kind == "macs" else g0.params()
    split = decompose_(model, filter_groups(model, ctx)) if cfg.decompose_residual else []
    rank0 = {f: model.get_submodule(f).basis.out_channels for f in split}
    g_split = _graph(model, ctx)
    groups = filter_groups(model, ctx, g_split)
    scored = [g for g in groups if len(g.convs) == 1]
    columns = ColumnGroups.of(model, scored)
    if not columns.members:
        raise ConfigError(f"model={type(model).__name__}: method 'hinge' found no channel group read by a Conv2d "
                          f"or Linear layer (the matrix A whose columns it makes sparse); prune a conv network")
    def met(zero: dict) -> bool:  # removing the zero columns alone meets the target (of the model before the split)
        return removal_cost(g_split, scored, zero, ctx.target_kind) <= ctx.target_value * dense
    prox = HingeProx(columns, cfg.reg, cfg.threshold, met if cfg.stop_at_target else None)
    fit(model, ctx.train_data, method_train_config(ctx), callbacks=[prox])
    norms = columns.norms()
    zero = int(sum(int((n == 0).sum()) for n in norms.values()))
    # the target is a fraction of the model before the decomposition
    g1 = _graph(model, ctx)
    now = g1.macs() if ctx.target_kind == "macs" else g1.params()
    value = ctx.target_value * dense / now
    if value >= 1.0:
        value = 0.999999
    cut_ctx = dataclasses.replace(ctx, target=f"{ctx.target_kind}={value}")
    report = cut_to_target(model, cut_ctx, {k: v.float() for k, v in norms.items()}, allocation="global")
    basis_removed = sum(rank0[f] - model.get_submodule(f).basis.out_channels for f in split)
    ranks = {f: model.get_submodule(f).basis.out_channels for f in split}
    layers_split = fold_smaller_(model, split)
    macs_after = _graph(model, ctx).macs()
    params_after = sum(p.numel() for p in model.parameters())
    emergent = min(zero, report["removed_channels"])
    telemetry = {"prox_steps": prox.steps, "stopped_at": prox.stopped_at, "zero_columns": zero, "removed_channels": report["removed_channels"],
                 "topped_up": report["removed_channels"] - emergent, "basis_removed": int(basis_removed),
                 "layers_split": layers_split}
    info = {"reg": cfg.reg, "threshold": cfg.threshold, "decomposed": split, "ranks": ranks,
            "macs_fraction": macs_after / dense_macs, "params_before": int(dense_params),
            "params_after": int(params_after), "engine_report": report["engine_report"],
            "epochs_trained": ctx.prune_epochs}
    return MethodResult(model=model, telemetry=telemetry, info=info)
