"""CLIP-Q: pruning and quantisation in parallel with fine-tuning, per-layer (p, b) by Bayesian optimisation.

Paper: Frederick Tung, Greg Mori, "CLIP-Q: Deep Network Compression Learning by In-Parallel
Pruning-Quantization", CVPR 2018. http://www.sfu.ca/~ftung/papers/clipq_cvpr18.pdf

Pruning and quantising one after the other fixes each decision for good. CLIP-Q does both at every training
iteration from a full-precision copy of the weights: in each layer the fraction p of weights nearest zero is
clipped to zero, the rest of the value range is cut into 2^b - 1 equal bins and each weight takes its bin's
mean. The forward and backward passes use this clipped, quantised copy, while the update is applied to the
full-precision weights, which keep moving and can leave the clipped interval again (or fall into it). Each
layer's (p, b) is chosen before fine-tuning by Bayesian optimisation of an objective that trades accuracy
against the compressed size. The stored model is the sparse positions plus a b-bit code per kept weight.

Here: the clip-and-partition quantiser is :func:`prunekit.quantize.clip_partition`; :class:`ClipQuantize` is the
in-parallel training callback (a straight-through update of the full-precision copy). The search is one joint
constrained Bayesian optimisation over every layer's (p, b) through :func:`prunekit.allocate.bayesopt.bayesopt`
(optuna's Gaussian-process sampler), maximising accuracy on held-out batches minus ``gamma`` times the
compressed size relative to float32, subject to the run's target sparsity (the weighted mean of the p's);
the uniform point (p = target, b = ``bits``) is evaluated first, so a feasible point always exists. The paper's
exact BO objective and whether it searches layer by layer are recalled, not verified (see the entry), and the
size term uses prunekit's packed format (bitmap + codebook + b-bit codes, :mod:`prunekit.quantize.store`).
``search="fixed"`` skips the search: every layer gets (target, ``bits``), as in the entry's small-scale check.
After the method's ``prune_epochs`` of in-parallel training the clipped sets are frozen as hard masks and the
returned callback keeps re-partitioning the kept weights, so the caller's fine-tune leaves the model pruned and
quantised (ours: the paper's fine-tuning is the in-parallel phase itself).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..allocate.bayesopt import Variable, bayesopt
from ..errors import ConfigError
from ..masks import install_masks_, prunable_weights
from ..quantize import bits_used, clip_partition, packed_size
from ..train import fit
from ..train.callbacks import WeightSTE
from ..train.config import method_train_config
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

__all__ = ["CLIPQConfig", "ClipQuantize", "search_layers", "run"]


@dataclass(frozen=True)
class CLIPQConfig(MethodConfig):
    search: Literal["bayesopt", "fixed"] = "bayesopt"  # sec. 3.2: per-layer (p, b) by Bayesian optimisation
    bits: int = option(5, ge=1, le=8)  # b of the fixed setting and the search's first point (entry's check: 5)
    bits_min: int = option(2, ge=1, le=8)  # search range of b (ours: the paper searches b per layer)
    bits_max: int = option(8, ge=1, le=8)  # search range of b (ours; 8 bits is the usual ceiling)
    p_max: float = option(0.99, gt=0, lt=1)  # search range of p, [0, p_max] (ours)
    gamma: float = option(1.0, ge=0)  # objective: accuracy - gamma * compressed/dense size (ours: the trade-off weight)
    budget: int = option(30, ge=1)  # BO evaluations (ours: search budget)
    startup: int = option(10, ge=1)  # random evaluations before the GP (ours)
    search_batches: int = option(4, ge=1)  # held-out batches per evaluation (ours: val data, else train batches)


class ClipQuantize(WeightSTE):
    """In-parallel clip-and-quantise (CLIP-Q, sec. 3.1): :class:`WeightSTE` with ``clip_partition(full, p, b)``
    per layer (``layers = {fqn: (p, b)}``), recomputed from the full-precision weights at every iteration.

    Counts the weights that leave the clipped set (``reentered``) and enter it (``clipped``) between two
    consecutive iterations. After :meth:`freeze` the clipped sets stay as they are (the model's hard masks hold
    them) and only the kept weights are re-partitioned, so a later fine-tune keeps the model quantised.
    """

    def __init__(self, model, layers: dict[str, tuple[float, int]]):
        super().__init__(model, layers)
        self.layers = dict(layers)
        self.kept = {f: clip_partition(w, *self.layers[f])[1] for f, w in self.full.items()}
        self.reentered = 0
        self.clipped = 0
        self.frozen = False

    def freeze(self) -> dict[str, torch.Tensor]:
        """Stop re-clipping; returns the final kept sets ``{fqn: bool mask}``."""
        self.frozen = True
        return {f: k.clone() for f, k in self.kept.items()}

    def quantized(self, f: str, full: torch.Tensor) -> torch.Tensor:
        p, b = self.layers[f]
        if self.frozen:
            kept = self.kept[f]
            q = torch.zeros_like(full)
            q[kept] = clip_partition(full[kept], 0.0, b)[0]
        else:
            q, kept = clip_partition(full, p, b)
        self.reentered += int((kept & ~self.kept[f]).sum())
        self.clipped += int((~kept & self.kept[f]).sum())
        self.kept[f] = kept
        return q


def _layer_bits(n: int, p: float, b: int) -> float:
    """Stored bits of one layer in the packed format: bitmap + codebook + b-bit code per kept weight."""
    return n + 32 * (2 ** b - 1) + b * (n - round(p * n))


def _accuracy(model, batches) -> float:
    model.eval()
    with torch.no_grad():
        right = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    return right / max(1, sum(len(y) for _, y in batches))


def search_layers(model, params: dict, batches, target: float, cfg: CLIPQConfig, seed: int = 0):
    """The per-layer (p, b) of the joint constrained BO (module docstring); returns ``(layers, search info)``."""
    names = list(params)
    sizes = {f: params[f].numel() for f in names}
    total = sum(sizes.values())
    dense_bits = 32 * total
    full = {f: params[f].detach().clone() for f in names}
    variables = [v for i in range(len(names)) for v in
                 (Variable(f"p{i}", 0.0, cfg.p_max), Variable(f"b{i}", cfg.bits_min, cfg.bits_max, integer=True))]

    def layers_of(point):
        return {f: (float(point[f"p{i}"]), int(point[f"b{i}"])) for i, f in enumerate(names)}

    def sparsity(point):
        return sum(round(p * sizes[f]) for f, (p, _) in layers_of(point).items()) / total

    def objective(point):
        with torch.no_grad():
            for f, (p, b) in layers_of(point).items():
                params[f].copy_(clip_partition(full[f], p, b)[0])
            acc = _accuracy(model, batches)
            for f in names:
                params[f].copy_(full[f])
        size = sum(_layer_bits(sizes[f], p, b) for f, (p, b) in layers_of(point).items())
        return acc - cfg.gamma * size / dense_bits

    first = {k: v for i in range(len(names)) for k, v in ((f"p{i}", target), (f"b{i}", cfg.bits))}
    res = bayesopt(objective, variables, constraints=lambda pt: [target - sparsity(pt) - 1e-3], budget=cfg.budget,
                   startup=min(cfg.startup, cfg.budget), seed=seed, enqueue=[first])
    best = res.best.params if res.best is not None else first
    info = {"evaluations": len(res.evaluations), "feasible": sum(e.feasible for e in res.evaluations),
            "best_objective": res.best.objective if res.best is not None else None,
            "first_objective": res.evaluations[0].objective}
    return layers_of(best), info


@register_method("clip-q", config=CLIPQConfig, kind="unstructured", needs=("train",), smoke={"search": "fixed"},
                 telemetry=Telemetry(keys=("reentered", "clipped", "steps", "bits"),
                                     engaged=lambda t: t["steps"] >= 1 and t["reentered"] >= 1,
                                     what="in-parallel pruning (weights leaving the clipped interval during training)",
                                     knob="raise prune_epochs or the learning rate: no clipped weight moved back out "
                                          "of the clipped interval"))
def run(ctx: RunContext, cfg: CLIPQConfig) -> MethodResult:
    """Choose each layer's (p, b), then fine-tune with in-parallel clipping and quantisation."""
    if cfg.bits_min > cfg.bits_max:
        raise ConfigError(f"bits_min={cfg.bits_min} > bits_max={cfg.bits_max}: give bits_min <= bits_max")
    if ctx.prune_epochs < 1:
        raise ConfigError(f"prune_epochs={ctx.prune_epochs!r}: CLIP-Q prunes and quantises during fine-tuning; "
                          f"give prune_epochs >= 1")
    params = prunable_weights(ctx.model, ctx.ignore)
    target = ctx.target_value
    search_info = {}
    if cfg.search == "bayesopt":
        held = list(ctx.val_data) if ctx.val_data is not None else ctx.calib
        if not held:
            held = [b for _, b in zip(range(cfg.search_batches), ctx.train_data)]
        held = [(x.to(ctx.device), y.to(ctx.device)) for x, y in held[:cfg.search_batches]]
        layers, search_info = search_layers(ctx.model, params, held, target, cfg, ctx.seed)
    else:
        layers = {f: (target, cfg.bits) for f in params}
    cb = ClipQuantize(ctx.model, layers)
    fit(ctx.model, ctx.train_data, method_train_config(ctx), callbacks=[cb])
    install_masks_(ctx.model, cb.freeze(), mode="hard")  # the clipped sets hold through the caller's fine-tune
    used = bits_used(ctx.model)
    zeros = sum(round(p * params[f].numel()) for f, (p, _) in layers.items()) / sum(v.numel() for v in params.values())
    telemetry = {"reentered": cb.reentered, "clipped": cb.clipped, "steps": cb.steps,
                 "bits": {f: used[f]["bits"] for f in layers if f in used}}
    dense = sum(4 * t.numel() for t in ctx.model.state_dict().values())
    packed = packed_size(ctx.model)
    info = {"layers": {f: {"p": p, "b": b} for f, (p, b) in layers.items()}, "sparsity": zeros,
            "search": search_info, "packed_bytes": packed, "dense_bytes": dense, "ratio": dense / packed,
            "distinct": {f: used[f]["distinct"] for f in layers if f in used}}
    return MethodResult(ctx.model, callbacks=[cb], info=info, telemetry=telemetry)
