"""LFPC: learn per layer which pruning criterion to use (Gumbel-softmax sampler), then soft filter pruning with it.

Paper: Yang He, Yuhang Ding, Ping Liu, Linchao Zhu, Hanwang Zhang, Yi Yang, "Learning Filter Pruning Criteria for
Deep Convolutional Neural Networks Acceleration", CVPR 2020.
https://openaccess.thecvf.com/content_CVPR_2020/html/He_Learning_Filter_Pruning_Criteria_for_Deep_Convolutional_Neural_Networks_Acceleration_CVPR_2020_paper.html
(no reference code was found).

One criterion for the whole network (the L1 norm, or the distance to the geometric median) ignores that layers
differ. LFPC keeps, per layer, a learnable categorical distribution over candidate criteria (L1, L2, geometric
median). Each criterion gives the layer a pruning mask at the layer's rate; a Gumbel-softmax sample of the
distribution mixes the masked outputs, so the loss of the network with every layer pruned at once is
differentiable with respect to the distributions, which are trained on it. The network itself is trained with
soft filter pruning: at the end of every epoch each layer zeroes the filters its chosen criterion ranks lowest,
the zeroed filters keep training and may come back, and at the end the zeroed filters are removed.

Here the candidates are registered criteria (:class:`prunekit.criteria.choice.CriterionChoice`, one per prunable
channel group; filters tied by a residual add are scored together), the per-layer counts come from the engine's
uniform allocation at the MAC/parameter target (as in :mod:`prunekit.methods.sfp`), and every epoch of
:func:`prunekit.train.fit` ends with ``search_steps`` sampler updates (Adam on the logits, the weights frozen, the
model in eval mode) on ``ctx.val_data`` batches (the training batches when no held-out batches are given), then
the soft-pruning selection of each layer with its most probable criterion. Temperature, sampler step and search
length were not found: ours.

Telemetry: the criterion chosen per layer and its probability, the sampler's mean entropy before and after the
search, the soft selections and the filters that came back. Engaged when the sampler's entropy fell.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from itertools import cycle, islice

import torch
import torch.nn.functional as F

from ..criteria.choice import CriterionChoice, filter_scores, keep_mask
from ..train import fit
from ..train.config import method_train_config
from ..train.loop import output_logits
from ._config import MethodConfig, option
from ._filter_common import cut_to_target, filter_groups, removal_counts, require_prune_epochs, weight_scores
from ._regularizers import SoftFilterMask
from ._registry import MethodResult, RunContext, Telemetry, register_method
from ._soft_masks import ChannelMaskHooks

log = logging.getLogger(__name__)

__all__ = ["LFPCConfig", "LayerCriterionSampler", "PerLayerSoftFilterMask", "run"]


@dataclass(frozen=True)
class LFPCConfig(MethodConfig):
    criteria: tuple[str, ...] = ("l1", "l2", "fpgm")  # candidate criteria (paper sec. 3: L1, L2, geometric median)
    temperature: float = option(1.0, gt=0)  # Gumbel-softmax tau (ours: not found)
    sampler_lr: float = option(0.05, gt=0)  # Adam step on the sampler logits (ours: not found)
    search_steps: int = option(20, ge=0)  # sampler updates per epoch (ours: not found); 0 = uniform choice
    interval: int = option(1, ge=1)  # epochs between soft selections (paper: every epoch, as SFP)


class PerLayerSoftFilterMask(SoftFilterMask):
    """Soft filter pruning where each tied set of layers is scored by its own criterion (``criteria[first fqn]``)."""

    def __init__(self, layers, n_prune, criteria: dict[str, str], tied=None, every: int = 1):
        super().__init__(layers, n_prune, "l2", tied=tied, every=every)
        self.criteria = dict(criteria)

    def group_scores(self, members: list[str]) -> torch.Tensor:
        crit = self.criteria.get(members[0], self.criterion)
        return sum(weight_scores(self.layers[f].weight, crit) for f in members)


class LayerCriterionSampler:
    """One :class:`CriterionChoice` per tied set of layers; :meth:`search` trains them on the loss of the network
    with every set masked at once by its Gumbel-mixed criterion masks (weights frozen)."""

    def __init__(self, model, tied: list[list[str]], n_prune: dict[str, int], criteria, tau: float, lr: float,
                 seed: int = 0):
        self.model = model
        mods = dict(model.named_modules())
        self.layers = {f: mods[f] for t in tied for f in t}
        self.tied, self.n_prune, self.tau = tied, n_prune, float(tau)
        self.choices = {t[0]: CriterionChoice(criteria) for t in tied}
        self.opt = torch.optim.Adam([c.logits for c in self.choices.values()], lr=lr)
        self.gen = torch.Generator().manual_seed(seed)
        self.entropies: list[float] = [self.mean_entropy()]

    def mean_entropy(self) -> float:
        return sum(c.entropy() for c in self.choices.values()) / max(len(self.choices), 1)

    def criterion_masks(self) -> dict[str, torch.Tensor]:
        """``{first fqn: [n_criteria, width]}``: each criterion's keep-mask of the set (scores summed over it)."""
        out = {}
        for t in self.tied:
            c = self.choices[t[0]]
            out[t[0]] = torch.stack([keep_mask(sum(filter_scores(self.layers[f].weight, k) for f in t),
                                               self.n_prune.get(t[0], 0)) for k in c.criteria])
        return out

    def search(self, batches, steps: int) -> None:
        if steps <= 0:
            return
        masks = self.criterion_masks()
        first = {f: t[0] for t in self.tied for f in t}
        mixed: dict[str, torch.Tensor] = {}
        hooks = ChannelMaskHooks(self.layers, lambda f, _training: mixed[first[f]])
        was_training = self.model.training
        params = [p for p in self.model.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        self.model.eval()
        device = next(self.model.parameters()).device
        try:
            for x, y in islice(cycle(batches), steps):
                mixed.clear()
                for key, c in self.choices.items():
                    mixed[key] = c.mixed(masks[key], self.tau, self.gen).to(device)
                out = output_logits(self.model(x.to(device)))
                loss = F.cross_entropy(out, y.to(device))
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
        finally:
            hooks.remove()
            for p in params:
                p.requires_grad_(True)
            self.model.train(was_training)
        self.entropies.append(self.mean_entropy())


class _SearchThenSelect(PerLayerSoftFilterMask):
    """At each selection epoch: update the sampler, give each layer its most probable criterion, then zero."""

    def __init__(self, sampler: LayerCriterionSampler, search_data, steps: int, **kw):
        super().__init__(**kw)
        self.sampler, self.search_data, self.steps = sampler, search_data, int(steps)

    def on_epoch_end(self, state) -> None:
        total = getattr(getattr(state, "config", None), "epochs", None)
        if (state.epoch + 1) % self.every == 0 or (total is not None and state.epoch + 1 == total):
            self.sampler.search(self.search_data, self.steps)
            self.criteria = {k: c.chosen() for k, c in self.sampler.choices.items()}
            self.apply()


@register_method(
    "lfpc", config=LFPCConfig, kind="structured", needs=("train",),
    telemetry=Telemetry(
        keys=("chosen", "probability", "entropy_start", "entropy_end", "selections", "regrown"),
        engaged=lambda t: t["entropy_end"] < 0.99 * t["entropy_start"] and t["selections"] >= 1,
        what="the criteria sampler learning a per-layer choice (its entropy falling)",
        knob="raise options.search_steps or options.sampler_lr (or prune_epochs: the sampler searches each epoch)"))
def run(ctx: RunContext, cfg: LFPCConfig) -> MethodResult:
    require_prune_epochs(ctx, "lfpc")
    model = ctx.model
    for c in cfg.criteria:
        filter_scores(torch.ones(2, 1), c)  # a criterion that needs data is refused before training
    groups = [g for g in filter_groups(model, ctx) if g.convs]
    mods = dict(model.named_modules())
    layers = {f: mods[f] for g in groups for f in g.convs}
    counts = removal_counts(model, ctx, {f: weight_scores(m.weight, "l2") for f, m in layers.items()}, "uniform")
    n_prune = {g.convs[0]: counts.get(g.key, 0) for g in groups}
    tied = [list(g.convs) for g in groups]
    sampler = LayerCriterionSampler(model, tied, n_prune, cfg.criteria, cfg.temperature, cfg.sampler_lr, ctx.seed)
    search_data = list(ctx.val_data) if ctx.val_data is not None else ctx.train_data
    cb = _SearchThenSelect(sampler, search_data, cfg.search_steps, layers=layers, n_prune=n_prune,
                           criteria={t[0]: cfg.criteria[0] for t in tied}, tied=tied, every=cfg.interval)
    fit(model, ctx.train_data, method_train_config(ctx), callbacks=[cb])
    # the last epoch end zeroed the final selection: those filters score 0 and go first
    report = cut_to_target(model, ctx, {f: weight_scores(m.weight, "l2") for f, m in layers.items()},
                           allocation="uniform")
    chosen = {k: c.chosen() for k, c in sampler.choices.items()}
    prob = {k: float(c.probs().max()) for k, c in sampler.choices.items()}
    telemetry = {"chosen": chosen, "probability": prob, "entropy_start": sampler.entropies[0],
                 "entropy_end": sampler.entropies[-1], "selections": len(cb.history), "regrown": cb.regrown()}
    log.info("lfpc: criteria %s", chosen)
    return MethodResult(model=model, telemetry=telemetry, info={
        "criteria_counts": {c: sum(v == c for v in chosen.values()) for c in cfg.criteria},
        "entropy_per_search": sampler.entropies, "max_entropy": math.log(len(cfg.criteria)), **report})

