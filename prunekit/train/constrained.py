"""Constrained training: an augmented-Lagrangian / ADMM callback over a set of weights.

The problem ``min_W loss(W)  s.t.  W in C`` (C: a sparsity, N:M or row-sparse set) is split with an auxiliary
copy ``Z`` that lives in C and scaled dual variables ``U`` (Boyd et al. 2011, sec. 3.1.1). Training minimises
``loss(W) + (rho/2) * ||W - Z + U||^2`` (the W-step; the penalty is added to the loss in
``on_before_backward``, whatever the loss is), and every ``interval`` steps or epochs::

    Z <- proj_C(W + U)          # Euclidean projection: keep the largest |W + U| the set allows
    U <- U + W - Z              # dual ascent on the scaled multipliers
    rho <- min(rho * rho_factor, rho_max);  U <- U * rho_old / rho_new

The last line keeps the unscaled multiplier ``lambda = -rho * U`` unchanged when the penalty grows, which is
exactly the learning-compression algorithm's ``lambda`` bookkeeping (Carreira-Perpinan & Idelbayev 2018:
``mu/2 ||w - theta - lambda/mu||^2``, ``theta = proj(w - lambda/mu)``, ``lambda <- lambda - mu (w - theta)``),
so one block serves ADMM pruning (Zhang et al. 2018), LC pruning and adversarial ADMM. It knows nothing about
the loss.

Projections (:class:`Projection`) use the registered mask patterns' selection: ``"element"`` (top-k magnitude
per layer or over all layers), ``"N:M"`` (the N:M pattern's own group top-N) and ``"row"`` (whole output
rows/filters by their norm). Telemetry per update: ``gap`` = ``||W - Z||`` (the primal residual; it should
fall), ``flips`` (entries whose membership in the projection's support changed since the last update) and
``rho``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 4))
    >>> cb = ConstrainedTraining(Projection(sparsity=0.75), rho=1e-2)
    >>> cb.setup(model)
    >>> int(cb.masks["0.weight"].sum())
    4
    >>> cb.penalty().item() >= 0
    True
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from ..errors import ConfigError
from ..masks import get_pattern, prunable_weights, select_masks
from .callbacks import Callback, TrainState

__all__ = ["Projection", "ConstrainedTraining"]


@dataclass(frozen=True)
class Projection:
    """The Euclidean projection onto a sparsity set, built from a registered mask pattern.

    ``pattern``: ``"element"`` (single weights: keep the largest magnitudes), ``"N:M"`` (e.g. ``"2:4"``: the
    N:M pattern's selection, N largest of every M consecutive inputs; its sparsity is implied) or ``"row"``
    (whole output rows/filters, ranked by squared norm). ``scope``: ``"layer"`` (each layer at ``sparsity``,
    or at ``per_layer[fqn]``) or ``"global"`` (one ranking over all the weights). Scores are squared
    values, so the kept set minimises ``||V - proj(V)||`` (for rows: within each layer).

    Example:
        >>> p = Projection(sparsity=0.5)
        >>> z, m = p({"w": torch.tensor([[3.0, -1.0], [0.5, -4.0]])})
        >>> z["w"].tolist()
        [[3.0, 0.0], [0.0, -4.0]]
    """

    sparsity: float | None = None
    pattern: str = "element"
    scope: Literal["layer", "global"] = "layer"
    per_layer: dict = field(default_factory=dict)

    def __post_init__(self):
        pat = get_pattern(self.pattern)
        problems = []
        if self.scope not in ("layer", "global"):
            problems.append(f"scope={self.scope!r} must be 'layer' or 'global'")
        if pat.fixed_sparsity is not None:
            if self.sparsity is not None and abs(self.sparsity - pat.fixed_sparsity) > 1e-9:
                problems.append(f"sparsity={self.sparsity!r} conflicts with pattern={self.pattern!r} (its sparsity "
                                f"is {pat.fixed_sparsity:g}); pass sparsity={pat.fixed_sparsity:g} or None")
            if self.per_layer or self.scope != "layer":
                problems.append(f"pattern={self.pattern!r} fixes every layer's sparsity: drop per_layer and "
                                f"scope='global'")
        elif self.sparsity is None or not 0 <= self.sparsity < 1:
            problems.append(f"sparsity={self.sparsity!r} must be in [0, 1) (the fraction of weights removed)")
        for k, v in self.per_layer.items():
            if not (isinstance(v, (int, float)) and 0 <= v < 1):
                problems.append(f"per_layer[{k!r}]={v!r} must be in [0, 1)")
        if self.per_layer and self.scope == "global":
            problems.append("per_layer cannot be combined with scope='global'")
        if problems:
            raise ConfigError("Projection: " + "; ".join(problems))

    def check(self, weights: dict[str, torch.Tensor]) -> None:
        """ConfigError when the pattern cannot apply to a weight, or per_layer names an unknown one."""
        pat = get_pattern(self.pattern)
        problems = [f"{k}: {msg}" for k, w in weights.items()
                    for msg in pat.problems(tuple(w.reshape(w.shape[0], -1).shape))]
        unknown = [k for k in self.per_layer if k not in weights and f"{k}.weight" not in weights]
        if unknown:
            problems.append(f"per_layer names {unknown}, not among the constrained weights {list(weights)}")
        if problems:
            raise ConfigError("Projection: " + "; ".join(problems))

    def masks(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{fqn: bool mask}`` of the entries the projection of ``values`` keeps."""
        pat = get_pattern(self.pattern)
        scores = {k: v.detach().float().pow(2) for k, v in values.items()}
        if pat.fixed_sparsity is not None:
            return select_masks(scores, pat)
        if self.scope == "global":
            return select_masks(scores, pat, global_sparsity=float(self.sparsity))
        rates = {k: float(self.per_layer.get(k, self.per_layer.get(k.rpartition(".")[0], self.sparsity)))
                 for k in scores}
        return select_masks(scores, pat, rates)

    def __call__(self, values: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(Z, masks)``: the projection of ``values`` (kept entries unchanged, the rest zero) and its support."""
        masks = self.masks(values)
        return {k: torch.where(masks[k], v.detach(), torch.zeros_like(v)) for k, v in values.items()}, masks


class ConstrainedTraining(Callback):
    """ADMM / augmented-Lagrangian constrained training inside :func:`prunekit.train.fit` (or any loop).

    ``projection`` defines the constraint set; the weights are the model's prunable Linear/Conv weights minus
    ``ignore``/``exempt`` (or the fqns in ``params``). ``rho``: the penalty; ``rho_factor`` (>= 1) multiplies it
    after every update, up to ``rho_max``. ``interval``: steps (``unit="step"``) or epochs (``unit="epoch"``)
    between Z/U updates; ``max_updates`` stops updating after that many (the penalty stays on). ``use_duals``:
    False gives the quadratic-penalty method (U stays zero).

    In your own loop: call :meth:`setup` once, add :meth:`penalty` to the loss of every step and call
    :meth:`update` every ``interval`` steps. ``history`` holds ``{"step", "gap", "rel_gap", "flips", "rho"}``
    per update (the entry at ``setup`` has ``flips = 0``).
    """

    def __init__(self, projection: Projection, *, rho: float = 1e-4, rho_factor: float = 1.0,
                 rho_max: float = math.inf, interval: int = 1, unit: Literal["step", "epoch"] = "epoch",
                 max_updates: int | None = None, use_duals: bool = True, ignore=(), exempt=(), params=None):
        problems = []
        if not isinstance(projection, Projection):
            problems.append(f"projection={projection!r} must be a prunekit.train.constrained.Projection")
        if not (isinstance(rho, (int, float)) and rho >= 0 and math.isfinite(rho)):
            problems.append(f"rho={rho!r} must be a finite number >= 0 (the penalty weight, e.g. 1e-4)")
        if not (isinstance(rho_factor, (int, float)) and rho_factor >= 1):
            problems.append(f"rho_factor={rho_factor!r} must be >= 1 (1 = a fixed penalty)")
        if not (isinstance(rho_max, (int, float)) and rho_max >= rho):
            problems.append(f"rho_max={rho_max!r} must be >= rho={rho!r}")
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            problems.append(f"interval={interval!r} must be a positive int ({unit}s between updates)")
        if unit not in ("step", "epoch"):
            problems.append(f"unit={unit!r} must be 'step' or 'epoch'")
        if max_updates is not None and (isinstance(max_updates, bool) or not isinstance(max_updates, int)
                                        or max_updates < 0):
            problems.append(f"max_updates={max_updates!r} must be None or an int >= 0")
        if problems:
            raise ConfigError("ConstrainedTraining: " + "; ".join(problems))
        self.projection, self.rho = projection, float(rho)
        self.rho_factor, self.rho_max = float(rho_factor), float(rho_max)
        self.interval, self.unit, self.max_updates, self.use_duals = interval, unit, max_updates, use_duals
        self.ignore, self.exempt, self.params = tuple(ignore), tuple(exempt), params
        self.weights: dict[str, nn.Parameter] = {}
        self.Z: dict[str, torch.Tensor] = {}
        self.U: dict[str, torch.Tensor] = {}
        self.masks: dict[str, torch.Tensor] = {}
        self.history: list[dict] = []
        self.updates = 0

    # --- the algorithm ------------------------------------------------------------------------------------
    def setup(self, model: nn.Module, step: int = 0) -> None:
        """Pick the weights, Z = proj(W), U = 0."""
        weights = prunable_weights(model, self.ignore, self.exempt)
        if self.params is not None:
            missing = [k for k in self.params if k not in weights]
            if missing:
                raise ConfigError(f"params={list(self.params)!r}: {missing} are not prunable weights of the model; "
                                  f"choose from {list(weights)}")
            weights = {k: weights[k] for k in self.params}
        if not weights:
            raise ConfigError("ConstrainedTraining: no prunable weights (Linear/Conv) left after ignore/exempt")
        self.projection.check(weights)
        self.weights = weights
        self.Z, self.masks = self.projection({k: w.detach() for k, w in weights.items()})
        self.U = {k: torch.zeros_like(w, memory_format=torch.contiguous_format).detach() for k, w in weights.items()}
        self.updates = 0
        self.history = [self._record(step, flips=0)]

    def penalty(self) -> torch.Tensor:
        """``(rho/2) * sum ||W - Z + U||^2`` over the constrained weights (differentiable in W)."""
        terms = [(w - self.Z[k] + self.U[k]).pow(2).sum() for k, w in self.weights.items()]
        return 0.5 * self.rho * torch.stack(terms).sum()

    @torch.no_grad()
    def update(self, step: int = 0) -> dict:
        """One Z- and U-update (then the penalty schedule); returns the history entry."""
        W = {k: w.detach() for k, w in self.weights.items()}
        old = self.masks
        self.Z, self.masks = self.projection({k: W[k] + self.U[k] for k in W})
        if self.use_duals:
            for k in W:
                self.U[k] += W[k] - self.Z[k]
        flips = sum(int((self.masks[k] != old[k]).sum()) for k in W)
        self.updates += 1
        entry = self._record(step, flips)
        new = min(self.rho * self.rho_factor, self.rho_max)
        if new != self.rho and self.rho > 0:
            for k in self.U:
                self.U[k] *= self.rho / new  # keep lambda = -rho * U fixed (LC's multiplier)
        self.rho = new
        self.history.append(entry)
        return entry

    def _record(self, step: int, flips: int) -> dict:
        gap = math.sqrt(sum(float((w.detach() - self.Z[k]).pow(2).sum()) for k, w in self.weights.items()))
        norm = math.sqrt(sum(float(w.detach().pow(2).sum()) for w in self.weights.values()))
        return {"step": int(step), "gap": gap, "rel_gap": gap / norm if norm else 0.0, "flips": int(flips),
                "rho": self.rho}

    @property
    def multipliers(self) -> dict[str, torch.Tensor]:
        """The unscaled Lagrange multipliers ``lambda = -rho * U`` (LC's notation)."""
        return {k: -self.rho * u for k, u in self.U.items()}

    @property
    def flips(self) -> int:
        return sum(h["flips"] for h in self.history)

    def _due(self) -> bool:
        return self.max_updates is None or self.updates < self.max_updates

    # --- training hooks ------------------------------------------------------------------------------------
    def on_train_start(self, state: TrainState) -> None:
        if not self.weights:
            self.setup(state.model, state.step)

    def on_before_backward(self, state: TrainState) -> None:
        if self.rho > 0:
            state.loss = state.loss + self.penalty()

    def on_after_step(self, state: TrainState) -> None:
        if self.unit == "step" and state.step % self.interval == 0 and self._due():
            self.update(state.step)

    def on_epoch_end(self, state: TrainState) -> None:
        if self.unit == "epoch" and (state.epoch + 1) % self.interval == 0 and self._due():
            self.update(state.step)
