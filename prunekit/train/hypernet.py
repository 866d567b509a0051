"""A weight-generating hypernetwork over a live model, DHP's form (Li et al., ECCV 2020).

Every prunable channel group ``g`` of the model's graph owns a latent vector ``z_g`` (one entry per channel;
layers coupled by a residual sum share it, because their outputs are one group). The weight of every plain
convolution (``groups == 1``) is no longer a free parameter: it is generated from the latent of its output
channels and the latent of its input channels,

    M = z_out z_in^T + B0                           (outer product + bias, C_out x C_in)
    E[i, j, :] = M[i, j] * A1[i, j, :] + B1[i, j, :]  (per-element embedding to ``embed`` dims + bias)
    W[i, j, :] = E[i, j, :] @ A2[i, j] + B2[i, j, :]   (per-element linear map to the k*k kernel + bias)

so the latent entry ``z_l[i]`` reaches output channel ``i`` of layer ``l`` and input channel ``i`` of every
layer reading it. A latent entry with ``|z| < threshold`` is *pruned*: the generated slices it feeds are
multiplied by zero in the forward (with a straight-through gradient, so a pruned entry still receives the
gradient it would get unmasked and can grow back), and every other reader of the channel (a linear head, a
grouped convolution) sees it through the same zero mask. The hypernetwork model therefore computes exactly
what the compact model computes, and :meth:`HyperNet.to_compact_` turns it into that ordinary model: the
weights are generated once, the hypernetwork is dropped, and the pruned channels are removed physically
(``pk.plan_channels`` + ``pk.prune_``).

:func:`proximal_` is DHP's proximal gradient step on the latents (an L1 soft-threshold of strength
``gamma * lr``) and :class:`ProximalLatents` the training callback that applies it after every optimizer step
and stops training once the FLOPs of the unpruned channels fall to a target.

Dims outside any prunable group (the image channels of the first convolution, the classes of an output head)
get a latent of their own that is learnt but never thresholded (ours: DHP's networks start from the image).
"""
from __future__ import annotations

import math
import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..api import Subnets, plan_channels, prune_
from ..errors import ConfigError
from .callbacks import Callback

__all__ = ["HyperNet", "WeightGenerator", "proximal_", "ProximalLatents", "soft_threshold"]


def soft_threshold(z: torch.Tensor, t: float) -> torch.Tensor:
    """``sign(z) * max(|z| - t, 0)``: the proximal operator of ``t * ||z||_1``.

    Example:
        >>> soft_threshold(torch.tensor([0.5, -0.05, -2.0]), 0.1).tolist()
        [0.4000000059604645, -0.0, -1.899999976158142]
    """
    return torch.sign(z) * torch.clamp(z.abs() - t, min=0.0)


def _st_mask(w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``w * mask`` in the forward; the gradient of ``w`` unmasked (straight-through)."""
    return w * mask + (w - w.detach()) * (1.0 - mask)


class WeightGenerator(nn.Module):
    """DHP's per-layer hypernetwork: the weight of a ``C_out x C_in x k x k`` convolution from ``z_out``
    (``C_out``) and ``z_in`` (``C_in``); see the module docstring. Used as a parametrization of the weight
    (:func:`torch.nn.utils.parametrize`), so the module's ``weight`` attribute is the generated tensor.

    ``z_out``/``z_in``: latent parameters (shared by every layer of a group), read at ``idx_out``/``idx_in``
    (the group channel of each position; None: the latent is the layer's own). A position whose latent is
    below ``threshold`` is masked to zero when ``prune_out``/``prune_in`` says the latent is a group's.
    ``init_std``: the standard deviation the generated weights start with (He initialisation of the layer
    when the latents are standard normal, as DHP draws them).
    """

    def __init__(self, shape, z_out: nn.Parameter, z_in: nn.Parameter, *, idx_out=None, idx_in=None,
                 prune_out: bool = True, prune_in: bool = True, threshold: float = 5e-3, embed: int = 8,
                 init_std: float | None = None, generator: torch.Generator | None = None):
        super().__init__()
        c_out, c_in = int(shape[0]), int(shape[1])
        kk = int(np.prod(shape[2:])) if len(shape) > 2 else 1
        self.shape = tuple(int(s) for s in shape)
        self.z_out, self.z_in = z_out, z_in
        self.register_buffer("idx_out", None if idx_out is None else torch.as_tensor(idx_out, dtype=torch.long),
                             persistent=False)
        self.register_buffer("idx_in", None if idx_in is None else torch.as_tensor(idx_in, dtype=torch.long),
                             persistent=False)
        self.prune_out, self.prune_in, self.threshold = prune_out, prune_in, float(threshold)
        std = math.sqrt(2.0 / (c_in * kk)) if init_std is None else float(init_std)
        self.bias0 = nn.Parameter(torch.zeros(c_out, c_in))
        self.weight1 = nn.Parameter(torch.randn(c_out, c_in, embed, generator=generator))
        self.bias1 = nn.Parameter(torch.zeros(c_out, c_in, embed))
        self.weight2 = nn.Parameter(torch.randn(c_out, c_in, embed, kk, generator=generator) * (std / math.sqrt(embed)))
        self.bias2 = nn.Parameter(torch.zeros(c_out, c_in, kk))

    def latents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_out, z_in)`` as this layer reads them (one entry per output / input position)."""
        zo = self.z_out if self.idx_out is None else self.z_out[self.idx_out]
        zi = self.z_in if self.idx_in is None else self.z_in[self.idx_in]
        return zo, zi

    def keep(self) -> torch.Tensor:
        """The 0/1 mask of the weight's ``[C_out, C_in]`` positions whose latents are not pruned."""
        zo, zi = (z.detach() for z in self.latents())
        ko = (zo.abs() >= self.threshold).to(zo) if self.prune_out else torch.ones_like(zo)
        ki = (zi.abs() >= self.threshold).to(zi) if self.prune_in else torch.ones_like(zi)
        return torch.outer(ko, ki)

    def generate(self) -> torch.Tensor:
        """The weight before the pruning mask."""
        zo, zi = self.latents()
        m = torch.outer(zo, zi) + self.bias0
        e = m.unsqueeze(-1) * self.weight1 + self.bias1
        w = torch.einsum("oie,oiek->oik", e, self.weight2) + self.bias2
        return w.reshape(self.shape)

    def forward(self, _original: torch.Tensor) -> torch.Tensor:
        w = self.generate()
        return _st_mask(w, self.keep().to(w).view(list(w.shape[:2]) + [1] * (w.dim() - 2)))


class _ChannelMask(nn.Module):
    """Parametrization of an ordinary reader of a group: its positions along ``dim`` are multiplied by the
    group's keep mask (0 where the latent ``z[idx]`` is below ``threshold``)."""

    def __init__(self, z: nn.Parameter, idx, dim: int, threshold: float):
        super().__init__()
        self.z, self.dim, self.threshold = z, dim, float(threshold)
        self.register_buffer("idx", torch.as_tensor(idx, dtype=torch.long), persistent=False)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        shape = [1] * w.dim()
        shape[self.dim] = w.shape[self.dim]
        keep = (self.z.detach()[self.idx].abs() >= self.threshold).to(w)
        return w * keep.view(shape)


class HyperNet:
    """The hypernetwork installed on ``model`` (see the module docstring); ``HyperNet(model, x)`` changes the
    model in place: every plain convolution's weight becomes generated, every other reader of a prunable
    channel masked. Holds the latents (``latents[g]`` for group ``g``, ``free[...]`` for dims outside a group).

    ``threshold``: a latent entry below it is pruned (DHP: 5e-3). ``embed``: the hypernetwork's embedding size
    (DHP: 8). ``ignore``: modules whose channels stay (as in ``pk.plan``). ``min_channels``: the proximal step
    never zeroes the last ``min_channels`` entries of a group (ours: a group cannot be emptied).

    Raises ConfigError (the model untouched) when no convolution can be generated, or when a prunable group
    is read by a module whose reading cannot be masked, naming the groups.
    """

    def __init__(self, model: nn.Module, example_inputs, *, threshold: float = 5e-3, embed: int = 8,
                 ignore=(), min_channels: int = 1, seed: int = 0):
        if not threshold > 0:
            raise ConfigError(f"threshold={threshold!r} must be > 0 (latent entries below it are pruned)")
        self.threshold, self.min_channels = float(threshold), int(min_channels)
        self.example_inputs, self.ignore = example_inputs, tuple(ignore)
        sub = Subnets(model, example_inputs, ignore=ignore)
        self.graph = sub.graph
        self._dense_macs = max(self.graph.macs(), 1)
        gen = torch.Generator().manual_seed(seed)
        params = dict(model.named_parameters())
        modules = dict(model.named_modules())
        # which (param fqn, dim) belongs to which group, and the group channel of each position
        where: dict = {}
        groups_used = []
        for g in self.graph.groups:
            if not any(m.role == "producer" for m in g.members):
                continue
            for m in g.members:
                if m.fqn in params and (m.channel < 0).any():
                    continue
                where[(m.fqn, m.dim)] = (g.id, torch.as_tensor(m.channel, dtype=torch.long), m.role)
            groups_used.append(g)
        self.latents = {str(g.id): nn.Parameter(torch.randn(g.width, generator=gen)) for g in groups_used}
        self.free: dict = {}  # the layers' own latents of dims outside a group (learnt, never thresholded)
        self.group_ids = [g.id for g in groups_used]
        self.generated: list[str] = []  # module fqns whose weight is generated
        self.masked: list[tuple] = []  # (param fqn, dim, group id) of other readers
        plans = []
        for name, mod in modules.items():
            if not (isinstance(mod, nn.Conv2d) and mod.groups == 1) or f"{name}.weight" not in params:
                continue
            if any(name == i or name.startswith(i + ".") for i in self.ignore):
                continue
            fqn = f"{name}.weight"
            out, inp = where.get((fqn, 0)), where.get((fqn, 1))
            if out is None and inp is None:
                continue
            plans.append((name, mod, fqn, out, inp))
        if not plans:
            raise ConfigError("HyperNet: the model has no convolution (groups=1) with a prunable channel group; "
                              "DHP generates convolution weights (check ignore=)")
        generated = {fqn for _, _, fqn, _, _ in plans}
        # only groups a generated layer reads or writes get a latent (a latent no generator uses would only
        # shrink under the proximal step): the others are not DHP's to prune
        used = {w[0] for _, _, _, out, inp in plans for w in (out, inp) if w is not None}
        self.latents = {k: v for k, v in self.latents.items() if int(k) in used}
        self.group_ids = [g for g in self.group_ids if g in used]
        unmaskable = []
        for (fqn, dim), (gid, _, role) in where.items():
            if gid not in used or role != "consumer" or fqn in generated or fqn not in params:
                continue
            if dim >= params[fqn].dim():
                unmaskable.append((gid, fqn))
                continue
            self.masked.append((fqn, dim, gid))
        if unmaskable:
            raise ConfigError("HyperNet: groups " + ", ".join(sorted({self.graph.groups[g].name or str(g)
                                                                      for g, _ in unmaskable}))
                              + " are read by parameters that cannot be masked per channel ("
                              + ", ".join(sorted({f for _, f in unmaskable})) + "); leave them out with ignore=")
        self._where = where
        for name, mod, fqn, out, inp in plans:
            shape = tuple(mod.weight.shape)
            z_out, idx_out = self._latent(out, f"{name}:out", shape[0], gen)
            z_in, idx_in = self._latent(inp, f"{name}:in", shape[1], gen)
            parametrize.register_parametrization(mod, "weight", WeightGenerator(
                shape, z_out, z_in, idx_out=idx_out, idx_in=idx_in, prune_out=out is not None,
                prune_in=inp is not None, threshold=self.threshold, embed=embed, generator=gen))
            self.generated.append(name)
        for fqn, dim, gid in self.masked:
            mod_name, _, pname = fqn.rpartition(".")
            parametrize.register_parametrization(modules[mod_name], pname, _ChannelMask(
                self.latents[str(gid)], where[(fqn, dim)][1], dim, self.threshold))

    # ------------------------------------------------------------------------------------------- latents
    def _latent(self, where, key: str, size: int, gen) -> tuple:
        """``(latent parameter, index of each position or None)`` of one dim of a generated weight."""
        if where is None:
            self.free[key] = nn.Parameter(torch.randn(size, generator=gen))
            return self.free[key], None
        return self.latents[str(where[0])], where[1]

    def group_latents(self) -> dict:
        """``{group id: latent parameter}`` of the prunable groups."""
        return {gid: self.latents[str(gid)] for gid in self.group_ids}

    def pruned(self) -> dict:
        """``{group id: indices of channels whose latent is below the threshold}`` (empty groups left out)."""
        out = {}
        for gid, z in self.group_latents().items():
            idx = torch.nonzero(z.detach().abs() < self.threshold).flatten().cpu().numpy()
            if len(idx):
                out[gid] = idx
        return out

    def macs_ratio(self) -> float:
        """Kept fraction of the dense model's MACs with the pruned channels removed (exact, from the graph)."""
        return self.graph.macs(self.graph.removed_flat(self.pruned())) / self._dense_macs

    @torch.no_grad()
    def proximal_(self, strength: float) -> int:
        """Soft-threshold every group latent by ``strength`` (never below ``min_channels`` live entries);
        returns the number of entries that became exactly zero in this step."""
        zeroed = 0
        for z in self.group_latents().values():
            before = int((z == 0).sum())
            new = soft_threshold(z, strength)
            live = new.abs() >= self.threshold
            if int(live.sum()) < self.min_channels:  # keep the largest entries of the group alive
                keep = torch.topk(z.abs(), min(self.min_channels, len(z))).indices
                new[keep] = torch.where(new[keep].abs() >= self.threshold, new[keep],
                                        torch.sign(z[keep]) * self.threshold)
            z.copy_(new)
            zeroed += int((z == 0).sum()) - before
        return zeroed

    # ----------------------------------------------------------------------------------------- conversion
    @torch.no_grad()
    def cut_smallest_(self, limit: float) -> int:
        """Ours (top-up): set the smallest live latents (over every group, by |z|) to zero until the MACs ratio
        is at most ``limit``; returns the entries cut (0 when already within)."""
        if self.macs_ratio() <= limit + 1e-12:
            return 0
        cand = []
        for gid, z in self.group_latents().items():
            live = torch.nonzero(z.abs() >= self.threshold).flatten().tolist()
            order = sorted(live, key=lambda i: float(z[i].abs()))
            cand += [(float(z[i].abs()), gid, i) for i in order[: max(0, len(live) - self.min_channels)]]
        cand.sort()
        lat = self.group_latents()
        cut = 0
        for _, gid, i in cand:
            lat[gid][i] = 0.0
            cut += 1
            if self.macs_ratio() <= limit + 1e-12:
                break
        if self.macs_ratio() > limit + 1e-12:
            raise ConfigError(f"the MACs limit {limit} cannot be reached with {self.min_channels} channel(s) left "
                              f"in every group (ratio {self.macs_ratio():.4f}); raise the target")
        return cut

    def to_compact_(self, model: nn.Module) -> dict:
        """Generate the weights once, drop the hypernetwork and remove the pruned channels physically.

        ``model`` is the model this hypernetwork was installed on. Returns ``{"removed": channels removed,
        "engine_report": the prune report as a dict}``.
        """
        pruned = self.pruned()
        with torch.no_grad():
            for z in self.group_latents().values():  # pruned entries are exactly zero from here on
                z[z.abs() < self.threshold] = 0.0
        modules = dict(model.named_modules())
        for name in self.generated:
            parametrize.remove_parametrizations(modules[name], "weight", leave_parametrized=True)
        for fqn, _, _ in self.masked:
            mod_name, _, pname = fqn.rpartition(".")
            if parametrize.is_parametrized(modules[mod_name], pname):
                parametrize.remove_parametrizations(modules[mod_name], pname, leave_parametrized=True)
        channels = {}
        for gid, idx in pruned.items():
            prod = next(m for m in self.graph.groups[gid].members if m.role == "producer")
            channels[prod.fqn] = sorted(int(p) for p in prod.positions(idx))
        removed = int(sum(len(v) for v in pruned.values()))
        if not channels:
            return {"removed": 0, "engine_report": None}
        plan = plan_channels(model, self.example_inputs, channels, ignore=self.ignore)
        report = prune_(model, plan, example_inputs=self.example_inputs)
        return {"removed": removed, "engine_report": report.to_dict()}


def proximal_(hyper: HyperNet, strength: float) -> int:
    """DHP's proximal step on ``hyper``'s latents: ``z <- sign(z) max(|z| - strength, 0)``; returns the
    entries zeroed by this step."""
    return hyper.proximal_(strength)


class ProximalLatents(Callback):
    """After every optimizer step: DHP's proximal step of strength ``gamma * lr`` (the lr of the first
    parameter group at that step) on the latents; every ``check_every`` steps the MACs ratio of the unpruned
    channels is computed and training stops (``state.stop``) once it is at most ``stop_ratio`` (None: never).
    Records ``steps``, ``zeroed`` (entries zeroed by the proximal step, summed), ``ratio`` (the last MACs
    ratio), ``stopped_at`` (the step training stopped at, or None) and ``ratios`` (one per check)."""

    def __init__(self, hyper: HyperNet, gamma: float, *, stop_ratio: float | None = None, check_every: int = 1):
        if gamma < 0:
            raise ConfigError(f"gamma={gamma!r} must be >= 0 (strength of the L1 proximal step)")
        self.hyper, self.gamma, self.stop_ratio = hyper, float(gamma), stop_ratio
        self.check_every = max(1, int(check_every))
        self.steps, self.zeroed, self.stopped_at = 0, 0, None
        self.ratio = hyper.macs_ratio()
        self.ratios: list = []

    def on_after_step(self, state) -> None:
        lr = float(state.optimizer.param_groups[0]["lr"]) if state.optimizer is not None else 0.0
        self.zeroed += self.hyper.proximal_(self.gamma * lr)
        self.steps += 1
        if self.steps % self.check_every == 0:
            self.ratio = self.hyper.macs_ratio()
            self.ratios.append(self.ratio)
            if self.stop_ratio is not None and self.ratio <= self.stop_ratio and self.stopped_at is None:
                self.stopped_at = self.steps
                state.stop = True
