"""Adversarial examples (FGSM, PGD), robust accuracy and Madry-style adversarial training as a callback.

Attacks work on the inputs the model sees, i.e. in the data's *normalised* space. ``eps`` and ``alpha`` are
given in pixel units (images in [0, 1], as papers state them: "eps = 0.3 on MNIST") and an
:class:`InputSpace` turns them into the normalised space: a pixel ``p`` is fed as ``(p - mean) / std``, so the
L-infinity ball of radius ``eps`` becomes ``eps / std`` per channel and the valid range [0, 1] becomes
``[(0 - mean) / std, (1 - mean) / std]`` (the clamp every attacked image gets). ``space=None`` means the
inputs are raw: no rescaling and no clamp.

* :func:`fgsm` (Goodfellow et al. 2015): ``x + eps * sign(grad_x loss)``.
* :func:`pgd` (Madry et al. 2018): optional uniform random start in the ball, then ``steps`` times
  ``x <- proj_ball(x + alpha * sign(grad_x loss))`` and the clamp.

Both run the model in eval mode (no BatchNorm statistics move), restore its train/eval mode, and take the
gradient with respect to the input only (``torch.autograd.grad``): no parameter's ``.grad`` changes.

Example:
    >>> import torch
    >>> from torch import nn
    >>> m = nn.Linear(2, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = m.weight.copy_(torch.tensor([[1.0, -2.0], [-1.0, 2.0]]))
    >>> fgsm(m, torch.zeros(1, 2), torch.tensor([0]), 0.1).tolist()  # steps along sign(w_1 - w_0)
    [[-0.10000000149011612, 0.10000000149011612]]
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .callbacks import Callback, TrainState
from .loop import output_logits

__all__ = ["InputSpace", "fgsm", "pgd", "run_attack", "robust_accuracy", "AdversarialTraining", "parse_attack"]


@dataclass(frozen=True)
class InputSpace:
    """The per-channel normalisation ``(p - mean) / std`` of pixels ``p`` in [0, 1] (see the module doc)."""

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    @classmethod
    def of(cls, data) -> "InputSpace | None":
        """The space of a :class:`prunekit.data.loader.TensorLoader` with a ``Normalize``; None otherwise."""
        norm = getattr(data, "normalize", None)
        if norm is None or not hasattr(norm, "mean") or not hasattr(norm, "std"):
            return None
        return cls(tuple(float(v) for v in norm.mean), tuple(float(v) for v in norm.std))

    def _view(self, values, x: torch.Tensor) -> torch.Tensor:
        t = torch.tensor(values, dtype=x.dtype, device=x.device)
        return t.view(1, -1, *([1] * (x.dim() - 2))) if x.dim() > 2 and len(values) > 1 else t.reshape(-1)[0]

    def radius(self, eps: float, x: torch.Tensor) -> torch.Tensor:
        """``eps`` pixels in normalised units (per channel)."""
        return eps / self._view(self.std, x)

    def bounds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised images of pixel values 0 and 1 (per channel)."""
        mean, std = self._view(self.mean, x), self._view(self.std, x)
        return (0.0 - mean) / std, (1.0 - mean) / std


def _check(eps, alpha=None, steps=None):
    problems = []
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        problems.append(f"eps={eps!r} must be a finite number >= 0 (the L-inf radius in pixel units, e.g. 0.1)")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0):
        problems.append(f"alpha={alpha!r} must be > 0 (the PGD step in pixel units, e.g. eps / 4)")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        problems.append(f"steps={steps!r} must be an int >= 1 (PGD iterations, e.g. 10)")
    if problems:
        raise ConfigError("; ".join(problems))


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(output_logits(model(x)), y)
        (g,) = torch.autograd.grad(loss, x)
    return g


def _clamp(x, space, x0):
    if space is None:
        return x
    lo, hi = space.bounds(x0)
    return torch.maximum(torch.minimum(x, hi), lo)


class _EvalMode:
    def __init__(self, model):
        self.model, self.was = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
         space: InputSpace | None = None) -> torch.Tensor:
    """``clamp(x + eps * sign(grad_x CE(model(x), y)))`` (one step; ``eps`` in pixel units)."""
    _check(eps)
    with _EvalMode(model):
        g = _input_grad(model, x, y)
    r = space.radius(eps, x) if space is not None else eps
    return _clamp(x.detach() + r * g.sign(), space, x).detach()


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
        random_start: bool = True, *, space: InputSpace | None = None,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient ascent on the cross-entropy inside the L-inf ball of radius ``eps`` around ``x``."""
    _check(eps, alpha, steps)
    x0 = x.detach()
    r = space.radius(eps, x0) if space is not None else torch.tensor(float(eps), dtype=x0.dtype, device=x0.device)
    a = space.radius(alpha, x0) if space is not None else float(alpha)
    lo, hi = x0 - r, x0 + r
    adv = x0.clone()
    if random_start and eps > 0:
        u = torch.rand(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        adv = _clamp(x0 + (2 * u - 1) * r, space, x0)
    with _EvalMode(model):
        for _ in range(steps):
            g = _input_grad(model, adv, y)
            adv = torch.maximum(torch.minimum(adv + a * g.sign(), hi), lo)
            adv = _clamp(adv, space, x0)
    return adv.detach()


def run_attack(model, x, y, kind: Literal["fgsm", "pgd"], eps: float, *, alpha: float | None = None, steps: int = 10,
           random_start: bool = True, space: InputSpace | None = None, generator=None) -> torch.Tensor:
    """FGSM or PGD by name; PGD's ``alpha`` defaults to ``2.5 * eps / steps`` (Madry et al.)."""
    if kind == "fgsm":
        return fgsm(model, x, y, eps, space=space)
    if kind == "pgd":
        alpha = alpha if alpha is not None else (2.5 * eps / steps if eps > 0 else 1.0)
        return pgd(model, x, y, eps, alpha, steps, random_start, space=space, generator=generator)
    raise ConfigError(f"attack={kind!r} is not an attack; use 'fgsm' or 'pgd'")


def robust_accuracy(model: nn.Module, data: Iterable, *, attack: Literal["fgsm", "pgd"] = "pgd", eps: float = 0.1,
                    alpha: float | None = None, steps: int = 10, random_start: bool = True, batches: int | None = None,
                    space: InputSpace | None | Literal["auto"] = "auto", device: str | torch.device = "cpu",
                    seed: int = 0) -> dict[str, float]:
    """Clean and adversarial accuracy of ``model`` on the first ``batches`` batches of ``data`` (all if None).

    ``space="auto"`` reads the normalisation of a prunekit loader (:meth:`InputSpace.of`). Returns
    ``{"clean", "robust", "n", "eps", "attack", "steps"}``; the model's mode and gradients are untouched.
    """
    if batches is not None and (isinstance(batches, bool) or not isinstance(batches, int) or batches < 1):
        raise ConfigError(f"batches={batches!r} must be None or an int >= 1")
    if space == "auto":
        space = InputSpace.of(data)
    gen = torch.Generator().manual_seed(seed)
    clean = robust = n = 0
    for i, (x, y) in enumerate(data):
        if batches is not None and i >= batches:
            break
        x, y = x.to(device), y.to(device)
        adv = run_attack(model, x, y, attack, eps, alpha=alpha, steps=steps, random_start=random_start,
                                  space=space, generator=gen)
        with _EvalMode(model), torch.no_grad():
            clean += int((output_logits(model(x)).argmax(-1) == y).sum())
            robust += int((output_logits(model(adv)).argmax(-1) == y).sum())
        n += len(y)
    if n == 0:
        raise ConfigError("robust_accuracy got no batches: data is empty; pass a non-empty iterable of (inputs, targets)")
    return {"clean": clean / n, "robust": robust / n, "n": n, "eps": float(eps), "attack": attack, "steps": steps}


def parse_attack(text: str) -> dict:
    """``"pgd:eps=0.1,steps=10[,alpha=0.025]"`` or ``"fgsm:eps=0.1"`` (the ``--robust`` option of ``prunekit run``
    and ``bench``) as keyword arguments of :func:`robust_accuracy`; a bad string is a ``ConfigError``.

    Example:
        >>> parse_attack("pgd:eps=0.1,steps=5")
        {'attack': 'pgd', 'eps': 0.1, 'steps': 5}
    """
    fix = "write e.g. 'pgd:eps=0.1,steps=10' (alpha=... optional) or 'fgsm:eps=0.1'"
    kind, _, rest = str(text).partition(":")
    if kind not in ("pgd", "fgsm"):
        raise ConfigError(f"robust={text!r}: the attack {kind!r} is not 'pgd' or 'fgsm'; {fix}")
    out: dict = {"attack": kind}
    allowed = {"eps": float, "steps": int, "alpha": float} if kind == "pgd" else {"eps": float}
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        key = key.strip()
        if key not in allowed or not eq:
            raise ConfigError(f"robust={text!r}: {part!r} is not one of {sorted(allowed)} as key=value; {fix}")
        try:
            out[key] = allowed[key](value)
        except ValueError:
            raise ConfigError(f"robust={text!r}: {key}={value!r} is not a number; {fix}") from None
    if "eps" not in out:
        raise ConfigError(f"robust={text!r} gives no eps (the L-inf radius in pixels); {fix}")
    _check(out["eps"], out.get("alpha"), out.get("steps"))
    return out


class AdversarialTraining(Callback):
    """Madry-style adversarial training: every training batch is replaced by its adversarial version.

    Works in :func:`prunekit.train.fit` and any loop built on the callback hooks (``on_batch_start`` swaps
    ``state.inputs``). ``space``: the :class:`InputSpace` of the training data (None: raw inputs, no clamp).
    ``attacked`` counts the batches replaced.
    """

    def __init__(self, eps: float, *, attack: Literal["fgsm", "pgd"] = "pgd", alpha: float | None = None,
                 steps: int = 10, random_start: bool = True, space: InputSpace | None = None, seed: int = 0):
        _check(eps, alpha, steps)
        if attack not in ("fgsm", "pgd"):
            raise ConfigError(f"attack={attack!r} is not an attack; use 'fgsm' or 'pgd'")
        self.eps, self.kind, self.alpha, self.steps = float(eps), attack, alpha, steps
        self.random_start, self.space = random_start, space
        self.generator = torch.Generator().manual_seed(seed)
        self.attacked = 0

    def on_batch_start(self, state: TrainState) -> None:
        if self.eps <= 0:
            return
        state.inputs = run_attack(state.model, state.inputs, state.targets, self.kind, self.eps, alpha=self.alpha,
                              steps=self.steps, random_start=self.random_start, space=self.space,
                              generator=self.generator)
        self.attacked += 1
