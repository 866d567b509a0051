"""MetaPruning: a weight-generating PruningNet trained on random widths, then an evolutionary width search.

Paper: Zechun Liu, Haoyuan Mu, Xiangyu Zhang, Zichao Guo, Xin Yang, Tim Kwang-Ting Cheng, Jian Sun,
"MetaPruning: Meta Learning for Automatic Neural Network Channel Pruning", ICCV 2019.
https://arxiv.org/abs/1903.10258 (reference code, read to understand: github.com/liuzechun/MetaPruning,
``resnet/training/resnet.py``, ``resnet/searching/search.py``).

Instead of scoring channels, MetaPruning learns to *produce* the weights of any pruned network. Every
convolution gets a small generator (two fully connected layers) that maps the layer's channel setting, the
"network encoding", to a full weight tensor, which is cropped to the sampled numbers of output and input
channels. Training draws a random encoding (a width ratio per layer) for every batch, generates the weights and
back-propagates into the generators, so one PruningNet serves every pruned network of the space. The widths are
then searched by an evolutionary algorithm: candidates are encodings whose FLOPs lie inside a window at the
target; each is scored by the accuracy of the network the PruningNet generates for it (BatchNorm statistics
re-estimated on training batches, accuracy on a held-out split of the training data); the top candidates are
mutated and crossed over generation after generation. The best encoding is trained from scratch.

Here the crop is the shared slimmable block (:mod:`prunekit.train.slimmable`: every reader of a dropped channel
reads zero, which equals the cropped network; coupled channels such as a residual stream share one width), the
generated weights replace the convolutions' own for each forward (nothing is copied), and the best encoding is
cut physically by the engine.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..allocate.search import SearchBudget, run_search
from ..data import first_batches
from ..errors import ConfigError
from ..train import Callback, evaluate, fit
from ..train.config import method_train_config
from ..train.slimmable import Slimmable, WidthSampler, ratio_grid
from ..train.subnet_eval import recalibrate_bn
from ._config import MethodConfig, option
from ._filter_common import require_prune_epochs
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["MetaPruningConfig", "PruningNet", "Evolution", "train_pruningnet", "encoding_scorer", "evolve", "run"]


@dataclass(frozen=True)
class MetaPruningConfig(MethodConfig):
    ratio_min: float = option(0.1, gt=0, le=1)  # smallest width ratio (reference: 31 ratios 0.10, 0.13, ..., 1.00)
    ratio_step: float = option(0.03, gt=0, le=1)  # step of the ratio grid (reference: 0.03)
    hidden: int = option(32, ge=1)  # generator width (reference: FC 1 -> 32 -> C_out*C_in*k*k)
    population: int = option(50, ge=1)  # candidates per generation (reference search.py: 50)
    parents: int = option(10, ge=1)  # top candidates kept as parents (reference: select_num 10)
    mutations: int = option(25, ge=0)  # children by mutation per generation (reference: 25)
    crossovers: int = option(25, ge=0)  # children by crossover per generation (reference: 25)
    mutate_prob: float = option(0.1, ge=0, le=1)  # per-gene mutation probability (reference: m_prob 0.1)
    generations: int = option(20, ge=1)  # generations (reference: max_epochs 20)
    window: float = option(0.025, gt=0, lt=1)  # FLOPs window width below the target (paper: 1950-2050 MFLOPs at
    # 2 GFLOPs, +-2.5%; here [target - window, target] so that the cut meets the target)
    recal_batches: int = option(100, ge=0)  # BN recalibration batches per candidate (reference: 100)
    val_images: int = option(10000, ge=1)  # held-out training images scoring a candidate (paper: 50 per class
    # of ImageNet train = 50,000; ours scaled to the data at hand)
    reinit: bool = True  # train the best encoding from scratch (paper); False keeps the generated weights (ours)
    max_draws: int = option(10_000, ge=1)  # ours: draws per candidate before the window is declared unreachable


class PruningNet(nn.Module):
    """The model run at ``self.widths`` with every convolution's weight generated from its encoding.

    The generator of a convolution maps ``(output width ratio, input width ratio)`` through
    ``Linear(2, hidden) -> ReLU -> Linear(hidden, numel)`` to a full weight tensor; the slimmable forward crops
    it (the readers of dropped channels read zero). Other parameters (BatchNorm, the classifier) are the
    model's own, shared by every encoding. Only plain convolutions (``groups=1``) whose channels are prunable
    get a generator."""

    def __init__(self, slim: Slimmable, hidden: int = 32):
        super().__init__()
        self.model, self.slim = slim.model, slim
        self.widths = slim.space.full()
        self.fqns, gens = [], []
        for name, mod in slim.model.named_modules():
            fqn = f"{name}.weight" if name else "weight"
            if not isinstance(mod, nn.Conv2d) or mod.groups != 1:
                continue
            if slim.segment_of(fqn) == (None, None):
                continue
            self.fqns.append(fqn)
            gens.append(nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, mod.weight.numel())))
        if not self.fqns:
            raise ConfigError("metapruning: the model has no prunable nn.Conv2d (groups=1) to generate weights for; "
                              "MetaPruning's PruningNet is built for convolutional networks")
        self.generators = nn.ModuleList(gens)
        self._shapes = [dict(slim.model.named_parameters())[f].shape for f in self.fqns]

    def encoding(self, fqn: str, ratios) -> torch.Tensor:
        out, inp = self.slim.segment_of(fqn)
        return torch.tensor([ratios[out] if out is not None else 1.0, ratios[inp] if inp is not None else 1.0])

    def generated(self, widths=None) -> dict:
        """``{conv weight fqn: generated full weight}`` at ``widths`` (default: ``self.widths``)."""
        ratios = self.slim.ratios(self.widths if widths is None else widths)
        ref = next(self.generators.parameters())
        return {f: g(self.encoding(f, ratios).to(ref)).view(shape)
                for f, g, shape in zip(self.fqns, self.generators, self._shapes)}

    def forward(self, *args, **kwargs):
        return self.slim.forward(*args, widths=self.widths, overrides=self.generated(), **kwargs)


class RandomEncoding(Callback):
    """A fresh random encoding (uniform per group over the grid) before every batch of PruningNet training."""

    def __init__(self, net: PruningNet, sampler: WidthSampler, seed: int):
        self.net, self.sampler, self.seed, self.steps = net, sampler, seed, 0

    def on_batch_start(self, state) -> None:
        self.net.widths = self.sampler.uniform(np.random.default_rng([self.seed, state.step]))

    def on_after_step(self, state) -> None:
        self.steps += 1


class Evolution:
    """MetaPruning's search as a proposer for :func:`prunekit.allocate.search.run_search`: a first population of
    random encodings inside the FLOPs window, then per generation ``mutations`` mutated and ``crossovers``
    crossed-over children of the ``parents`` best candidates so far, topped up with random ones; every child
    inside the window and not seen before."""

    def __init__(self, sampler: WidthSampler, cost, lo: float, hi: float, cfg: MetaPruningConfig):
        self.sampler, self.cost, self.lo, self.hi, self.cfg = sampler, cost, lo, hi, cfg
        self.queue: list = []
        self.seen: set = set()
        self.generation = -1

    def _ok(self, w) -> bool:
        return w not in self.seen and self.lo - 1e-12 <= self.cost(w) <= self.hi + 1e-12

    def _draw(self, rng, make) -> tuple | None:
        for _ in range(self.cfg.max_draws):
            w = make(rng)
            if self._ok(w):
                self.seen.add(w)
                return w
        return None

    def _random(self, rng):
        return self._draw(rng, self.sampler.uniform)

    def _next_generation(self, rng, record) -> None:
        self.generation += 1
        cfg, choices = self.cfg, self.sampler.choices
        kids = []
        if record.trials:
            parents = [t.widths for t in record.best(cfg.parents)]

            def mutate(r):
                p = parents[r.integers(len(parents))]
                return tuple(int(c[r.integers(len(c))]) if r.random() < cfg.mutate_prob else int(w)
                             for w, c in zip(p, choices))

            def cross(r):
                a, b = parents[r.integers(len(parents))], parents[r.integers(len(parents))]
                return tuple(int(x if r.random() < 0.5 else y) for x, y in zip(a, b))

            for make, n in ((mutate, cfg.mutations), (cross, cfg.crossovers)):
                for _ in range(n):
                    w = self._draw(rng, make) if len(parents) > 1 or make is mutate else None
                    if w is not None:
                        kids.append((w, "mutation" if make is mutate else "crossover"))
        while len(kids) < cfg.population:
            w = self._random(rng)
            if w is None:
                break
            kids.append((w, "random"))
        self.queue = kids[: cfg.population]

    def __call__(self, rng, record):
        if not self.queue:
            self._next_generation(rng, record)
        if not self.queue:
            if not record.trials:
                raise ConfigError(f"metapruning: no encoding of the ratio grid has its cost in the window "
                                  f"[{self.lo:.4f}, {self.hi:.4f}] after options.max_draws={self.cfg.max_draws} "
                                  f"draws; widen options.window or use a finer grid (options.ratio_step)")
            return None, {}
        w, how = self.queue.pop(0)
        return w, {"generation": self.generation, "origin": how}


def _engaged(t: dict) -> bool:
    return t["pruningnet_steps"] >= 1 and t["evaluated"] >= 2 and t["score_spread"] > 0.0


@register_method("metapruning", config=MetaPruningConfig, kind="structured", needs=("train", "val"),
                 status="partial",
                 left_out="per-width BatchNorm of the PruningNet (one shared BN, re-estimated for every candidate as "
                          "the search does); a generator per plain convolution only (the classifier, depthwise and "
                          "non-convolutional layers keep their own weights), so graphs beyond conv-BN chains and "
                          "basic-block ResNets are not a PruningNet of the paper",
                 smoke={"population": 4, "generations": 2, "parents": 2, "mutations": 2, "crossovers": 1,
                        "recal_batches": 1, "val_images": 32, "window": 0.2, "ratio_step": 0.15},
                 telemetry=Telemetry(
                     keys=("pruningnet_steps", "evaluated", "generations", "best_score", "uniform_score",
                           "score_spread", "best_cost", "window"),
                     engaged=_engaged,
                     what="a PruningNet trained on random encodings whose generated networks the evolution told "
                          "apart",
                     knob="raise prune_epochs (PruningNet training) and options.population / options.generations"))
def run(ctx: RunContext, cfg: MetaPruningConfig) -> MethodResult:
    require_prune_epochs(ctx, "metapruning")
    model, kind, target = ctx.model, ctx.target_kind, ctx.target_value
    pnet, sampler, enc = train_pruningnet(model, ctx.example_inputs, ctx.train_data, method_train_config(ctx), cfg,
                                          ignore=ctx.ignore, seed=ctx.seed, device=ctx.device)
    slim = pnet.slim
    score = encoding_scorer(pnet, ctx.train_data, ctx.val_data, cfg, ctx.device)
    record, evo = evolve(pnet, sampler, score, kind, target, cfg, seed=ctx.seed)
    cost = lambda w: slim.cost(w, kind)  # noqa: E731
    recal = first_batches(ctx.train_data, cfg.recal_batches)
    best = record.best(1)[0]
    uniform = sampler.snap([0.7 * w for w in slim.space.widths])  # the entry's uniform-0.7x encoding
    uniform_score = score(uniform)
    if not cfg.reinit:  # ours: hand on the generated weights of the best encoding
        pnet.widths = best.widths
        with torch.no_grad():
            for fqn, w in pnet.generated().items():
                dict(model.named_parameters())[fqn].copy_(w)
        if recal:
            recalibrate_bn(pnet, recal, ctx.device)
    report = slim.cut_(best.widths)
    if cfg.reinit:  # the paper trains the best encoding from scratch
        for m in model.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    scores = [t.score for t in record.trials]
    telemetry = {"pruningnet_steps": enc.steps, "evaluated": len(record.trials), "generations": evo.generation + 1,
                 "best_score": best.score, "uniform_score": uniform_score,
                 "score_spread": float(max(scores) - min(scores)), "best_cost": best.cost,
                 "window": [evo.lo, evo.hi]}
    info = {"widths": dict(zip(slim.names, map(int, best.widths))),
            "uniform_widths": dict(zip(slim.names, map(int, uniform))), "uniform_cost": cost(uniform),
            "scores": scores, "costs": [t.cost for t in record.trials],
            "origins": [t.info.get("origin") for t in record.trials], "engine_report": report.to_dict()}
    log.info("metapruning: %d encodings in %d generations, best %.4f at %.4f (uniform 0.7x: %.4f)",
             len(record.trials), evo.generation + 1, best.score, best.cost, uniform_score)
    return MethodResult(model=model, info=info, telemetry=telemetry)


def train_pruningnet(model, example_inputs, train_data, train_config, cfg: MetaPruningConfig, *, ignore=(), seed=0,
                     device="cpu"):
    """Stage 1: the PruningNet over ``model`` trained on a fresh random encoding per batch (``train_config``'s
    epochs); returns ``(pruningnet, sampler, callback)``."""
    slim = Slimmable(model, example_inputs, ignore=ignore)
    sampler = WidthSampler(slim.space, grid=ratio_grid(cfg.ratio_min, 1.0, cfg.ratio_step))
    pnet = PruningNet(slim, cfg.hidden).to(device)
    enc = RandomEncoding(pnet, sampler, seed)
    fit(pnet, train_data, train_config, callbacks=[enc])
    return pnet, sampler, enc


def encoding_scorer(pnet: PruningNet, train_data, val_data, cfg: MetaPruningConfig, device="cpu"):
    """``score(widths)``: accuracy on ``cfg.val_images`` held-out images of the network the PruningNet generates
    for ``widths``, its BatchNorm statistics re-estimated on ``cfg.recal_batches`` training batches."""
    recal = first_batches(train_data, cfg.recal_batches)
    val = _images(val_data, cfg.val_images)

    @torch.no_grad()
    def score(widths) -> float:
        pnet.widths = tuple(int(w) for w in widths)
        if recal:
            recalibrate_bn(pnet, recal, device)
        return float(evaluate(pnet, val, device=device)["accuracy"])

    return score


def evolve(pnet: PruningNet, sampler: WidthSampler, score, kind: str, target: float, cfg: MetaPruningConfig, *,
           seed: int = 0):
    """Stage 2: the evolutionary search in the window ``[target - cfg.window, target]``; returns the search
    record and the proposer."""
    slim = pnet.slim
    cost = lambda w: slim.cost(w, kind)  # noqa: E731
    evo = Evolution(sampler, cost, max(target - cfg.window, 0.0), target, cfg)
    record = run_search(slim.space, evo, score, cost, target, SearchBudget(evaluations=cfg.population * cfg.generations),
                        seed=seed)
    return record, evo


def _images(data, n: int) -> list:
    """The first batches of ``data`` holding at least ``n`` images (the last one trimmed)."""
    out, seen = [], 0
    for x, y in data:
        if seen >= n:
            break
        take = min(len(y), n - seen)
        out.append((x[:take], y[:take]))
        seen += take
    return out
