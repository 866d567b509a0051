"""Per-input (dynamic) channel gating whose pruned computation is really skipped.

A :class:`GatedConv` replaces a ``Conv2d`` and the ``BatchNorm2d`` right after it (the BN becomes an
``Identity``). For every input a *selector* (a small predictor: FBS's saliency layer, DSG's random-projection
estimate, RNP's decision network) returns a ``keep`` mask over the conv's output channels and, optionally, a
non-negative ``scale`` per channel. The unit computes

    y = scale * keep * BN(conv(x))                   (scale = 1 where the selector gives none)

or, for a selector with ``double_mask`` (DSG), ``scale * keep * BN(keep * conv(x))``: the mask before BN
(its batch statistics see the skipped outputs as zeros) and after it (BN's shift cannot bring a skipped
channel back). In eval mode both forms give the same numbers.

Two execution paths give the same numbers:

* ``masked`` (training; autograd flows through the selector): the dense conv, then the masks multiply;
* ``gather`` (inference, the default in eval mode): per sample, only the kept output channels are computed,
  from the weight rows gathered for them, reading only the input channels that are not exactly zero for
  this sample (the channels a gated layer upstream skipped, after ReLU / pooling); the rest of the output is
  zero. Samples with the same kept and read sets are computed together, in one call.

Every forward records the executed MACs per sample in ``unit.last_macs`` (a ``(batch,)`` tensor, the
selector's own MACs included): kept outputs x read inputs x kernel area x output pixels. With
:func:`executed_macs` this gives a model's executed MACs per input.

Save / load: the gating is part of the state (``gate_config``, an integer buffer per unit: kind of selector,
its sizes). ``pk.load(path, dynamic_factory(path, factory))`` rebuilds the gated units on the factory's
model before the weights are loaded.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from ..errors import ConfigError

__all__ = ["GatedConv", "gate_convs_", "gated_units", "executed_macs", "set_execution", "dynamic_factory",
           "SELECTORS", "register_selector", "topk_mask", "prefix_mask", "set_keep_", "SaliencySelector",
           "ProjectionSelector", "GroupSelector", "RNPAgent", "sparse_projection", "FBS", "DRS", "RNP"]

SELECTORS: dict[int, Callable] = {}  # code (saved in gate_config) -> builder(conv, config, shared) -> module


def register_selector(code: int):
    """Register ``builder(conv, config: list[int], shared: dict) -> nn.Module`` under the integer ``code``
    saved with a unit; ``shared`` is one dict per model build (for a decision network shared by all layers)."""

    def deco(builder):
        if code in SELECTORS:
            raise ConfigError(f"selector code {code} is already registered")
        SELECTORS[code] = builder
        return builder

    return deco


def topk_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` largest entries of every row of ``score`` (winner-take-all, k-WTA)."""
    k = max(0, min(int(k), score.shape[1]))
    mask = torch.zeros_like(score, dtype=torch.bool)
    if k:
        mask.scatter_(1, score.topk(k, dim=1).indices, True)
    return mask


def prefix_mask(counts: torch.Tensor, n: int) -> torch.Tensor:
    """Boolean ``(len(counts), n)`` mask keeping the first ``counts[b]`` channels of row ``b``."""
    return torch.arange(n, device=counts.device)[None, :] < counts[:, None]


class GatedConv(nn.Module):
    """A Conv2d (groups=1) and its BatchNorm2d gated per input by ``selector`` (see the module docstring).

    ``selector(x) -> (keep, scale)``: ``keep`` a bool ``(B, C_out)`` mask, ``scale`` ``(B, C_out)`` or None;
    it may expose ``macs(x) -> int``, its own MACs per sample. ``execution``: ``"auto"`` (masked while
    training, gather in eval), ``"masked"``, ``"gather"``.
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, selector: nn.Module, code: int,
                 config: list[int], bn_index: int = -1):
        super().__init__()
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
            raise ConfigError(f"GatedConv: conv={conv!r}; a dense Conv2d (groups=1) is needed")
        if bn is not None and (not isinstance(bn, nn.BatchNorm2d) or bn.num_features != conv.out_channels):
            raise ConfigError(f"GatedConv: bn={bn!r} does not follow conv with {conv.out_channels} channels")
        self.conv, self.bn, self.selector = conv, bn, selector
        if hasattr(selector, "_unit"):
            selector._unit[:] = [self]
        self.register_buffer("gate_config", torch.tensor([code, bn_index, *config], dtype=torch.long))
        self.execution = "auto"
        self.double_mask = bool(getattr(selector, "double_mask", False))
        self._last = None
        self._affine = None
        self.last_keep: torch.Tensor | None = None

    # --- the two execution paths ---------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, scale = self.selector(x)
        self.last_keep = keep
        gain = keep.to(x.dtype) if scale is None else scale * keep.to(x.dtype)
        path = self.execution if self.execution != "auto" else ("masked" if self.training else "gather")
        if path == "gather" and not torch.is_grad_enabled() and not (self.bn is not None and self.bn.training):
            y, read = self._gather(x, keep, gain)
        else:
            y = self.conv(x)
            if self.double_mask:  # DSG: BN (batch statistics included) sees the skipped outputs as zeros
                y = y * keep[:, :, None, None].to(x.dtype)
            if self.bn is not None:
                y = self.bn(y)
            y = y * gain[:, :, None, None]
            read = x.detach().abs().flatten(2).amax(2) > 0
        self._last = (x.shape, keep, gain.detach(), read)  # executed MACs are counted when asked (last_macs)
        return y

    @property
    def last_macs(self) -> torch.Tensor | None:
        """Executed MACs per sample of the latest forward (``(batch,)``), the selector's own included."""
        if self._last is None:
            return None
        shape, keep, gain, read = self._last
        return self._macs(torch.empty(shape, device="meta"), keep & (gain != 0), read)

    def train(self, mode: bool = True):
        self._affine = None  # BN statistics may change while training
        return super().train(mode)

    def _bn_affine(self):
        """BN in eval as ``y * a + b`` per channel (identity without BN); cached while in eval mode."""
        if self.bn is None:
            return None, None
        bn = self.bn
        key = tuple(None if t is None else (id(t), t._version)
                    for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var))
        if self._affine is not None and not self.training and self._affine[0] == key:
            return self._affine[1]
        affine = self._bn_affine_now()
        self._affine = (key, affine)
        return affine

    def _bn_affine_now(self):
        c = self.conv.out_channels
        bn = self.bn
        mean = bn.running_mean if bn.running_mean is not None else torch.zeros(c, device=bn.weight.device)
        var = bn.running_var if bn.running_var is not None else torch.ones(c, device=bn.weight.device)
        a = torch.rsqrt(var + bn.eps)
        if bn.weight is not None:
            a = a * bn.weight
        b = -mean * a + (bn.bias if bn.bias is not None else 0)
        return a, b

    def _gather(self, x: torch.Tensor, keep: torch.Tensor, gain: torch.Tensor):
        conv = self.conv
        read = x.abs().flatten(2).amax(2) > 0  # input channels that are not exactly zero, per sample
        keep = keep & (gain != 0)  # a kept channel scaled by exactly 0 is zero too
        a, b = self._bn_affine()
        if x.shape[0] == 1:
            patterns, rows = [(keep[0], read[0])], [None]
        else:  # samples with the same kept and read sets are computed together, in one call
            uniq, inverse = torch.unique(torch.cat([keep, read], 1), dim=0, return_inverse=True)
            c = keep.shape[1]
            patterns = [(u[:c], u[c:]) for u in uniq]
            rows = [(inverse == g).nonzero().flatten() for g in range(len(uniq))]
        out = None
        for (k, rd), r in zip(patterns, rows):
            o, ii = k.nonzero().flatten(), rd.nonzero().flatten()
            if o.numel() == 0:
                continue
            xi = x if r is None else x.index_select(0, r)
            bias = conv.bias[o] if conv.bias is not None else None
            if ii.numel() == 0:  # every input channel is zero for these samples: the output is the bias alone
                y = x.new_zeros(xi.shape[0], o.numel(), *self._out_hw(x))
                if bias is not None:
                    y = y + bias[None, :, None, None]
            elif ii.numel() < conv.in_channels:
                # index_select is the fast gather here; the weight is indexed (aten.index) so that the project's
                # MAC counter, which follows indexed parameters, counts this smaller conv
                y = conv._conv_forward(xi.index_select(1, ii), conv.weight[o[:, None], ii], bias)
            else:
                y = conv._conv_forward(xi, conv.weight[o], bias)
            g = gain[:, o] if r is None else gain[r][:, o]
            if a is not None:  # BN (eval) and the gain in one multiply-add
                y = y * (a[o] * g)[:, :, None, None] + (b[o] * g)[:, :, None, None]
            else:
                y = y * g[:, :, None, None]
            if out is None:
                out = x.new_zeros(x.shape[0], conv.out_channels, *y.shape[2:])
            if r is None:
                out.index_copy_(1, o, y)
            else:
                out.index_copy_(0, r, y.new_zeros(y.shape[0], conv.out_channels, *y.shape[2:]).index_copy_(1, o, y))
        if out is None:
            out = x.new_zeros(x.shape[0], conv.out_channels, *self._out_hw(x))
        return out, read

    # --- accounting ----------------------------------------------------------------------------------
    def _out_hw(self, x) -> tuple[int, int]:
        conv = self.conv
        hw = []
        for d in range(2):
            size = x.shape[2 + d] + 2 * conv.padding[d] if isinstance(conv.padding, tuple) else x.shape[2 + d]
            hw.append((size - conv.dilation[d] * (conv.kernel_size[d] - 1) - 1) // conv.stride[d] + 1)
        return hw[0], hw[1]

    def dense_macs(self, x) -> int:
        """MACs of the ungated conv on one sample of ``x``."""
        ho, wo = self._out_hw(x)
        kh, kw = self.conv.kernel_size
        return self.conv.out_channels * self.conv.in_channels * kh * kw * ho * wo

    def _macs(self, x, keep, read) -> torch.Tensor:
        ho, wo = self._out_hw(x)
        kh, kw = self.conv.kernel_size
        n_out = keep.sum(1).double()
        n_in = read.sum(1).double()
        own = getattr(self.selector, "macs", None)
        extra = float(own(x)) if callable(own) else 0.0
        return n_out * n_in * (kh * kw * ho * wo) + extra


def set_keep_(unit: GatedConv, k: int) -> None:
    """Keep ``k`` channels per input in ``unit`` (a top-k selector), in the selector and in the saved config."""
    k = max(1, min(int(k), unit.conv.out_channels))
    unit.selector.k = k
    unit.gate_config[2] = k


def gated_units(model: nn.Module) -> dict[str, GatedConv]:
    return {n: m for n, m in model.named_modules() if isinstance(m, GatedConv)}


def set_execution(model: nn.Module, mode: str) -> None:
    """``"auto"`` | ``"masked"`` | ``"gather"`` on every gated unit of ``model``."""
    if mode not in ("auto", "masked", "gather"):
        raise ConfigError(f"execution={mode!r}; choose 'auto', 'masked' or 'gather'")
    for m in gated_units(model).values():
        m.execution = mode


def gate_convs_(model: nn.Module, pairs, code: int, config_of: Callable[[str, nn.Conv2d], list[int]]) -> list[str]:
    """Replace every ``(conv_fqn, bn_fqn or None)`` of ``pairs`` by a :class:`GatedConv` whose selector is
    ``SELECTORS[code](conv, config_of(fqn, conv))``; the BN becomes ``nn.Identity``. Returns the gated FQNs."""
    if code not in SELECTORS:
        raise ConfigError(f"selector code {code} is not registered (known: {sorted(SELECTORS)})")
    names = [n for n, _ in model.named_modules()]
    shared: dict = {}
    done = []
    for conv_fqn, bn_fqn in pairs:
        conv = model.get_submodule(conv_fqn)
        bn = model.get_submodule(bn_fqn) if bn_fqn else None
        config = [int(v) for v in config_of(conv_fqn, conv)]
        unit = GatedConv(conv, bn, SELECTORS[code](conv, config, shared), code, config,
                         bn_index=names.index(bn_fqn) if bn_fqn else -1)
        model.set_submodule(conv_fqn, unit)
        if bn_fqn:
            model.set_submodule(bn_fqn, nn.Identity())
        done.append(conv_fqn)
    return done


def executed_macs(model: nn.Module, x: torch.Tensor, dense_rest: int = 0, execution: str = "auto") -> torch.Tensor:
    """Executed MACs per sample of ``x`` (a ``(batch,)`` double tensor): every gated unit's count plus
    ``dense_rest`` (the MACs of the layers that are not gated, the same for every input). No grad, eval.
    Both paths count the same MACs; ``execution="masked"`` gets them faster for a large batch."""
    was = model.training
    units = gated_units(model)
    modes = {n: u.execution for n, u in units.items()}
    model.eval()
    try:
        if execution != "auto":
            set_execution(model, execution)
        with torch.no_grad():
            model(x)
    finally:
        model.train(was)
        for n, u in units.items():
            u.execution = modes[n]
    total = torch.full((x.shape[0],), float(dense_rest), dtype=torch.float64)
    for unit in gated_units(model).values():
        total += unit.last_macs.to(torch.float64).cpu()
    return total


def dynamic_factory(path, factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """A factory for ``pk.load(path, ...)`` that rebuilds ``factory()``'s gated units as saved in ``path``.

    Reads the ``*.gate_config`` tensors of the safetensors file (no weights are loaded here); each says which
    selector the unit had, its sizes, and which module of the architecture was its BatchNorm.
    """
    configs = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            if key.endswith(".gate_config"):
                configs[key[: -len(".gate_config")]] = [int(v) for v in f.get_tensor(key).tolist()]

    def build() -> nn.Module:
        model = factory()
        names = [n for n, _ in model.named_modules()]
        swaps, shared = [], {}
        for fqn, cfg in configs.items():
            code, bn_index, rest = cfg[0], cfg[1], cfg[2:]
            if code not in SELECTORS:
                raise ConfigError(f"{path}: unit {fqn!r} has selector code {code}, not registered; import the "
                                  f"method that defines it (prunekit.methods)")
            bn_fqn = names[bn_index] if bn_index >= 0 else None
            swaps.append((fqn, bn_fqn, code, rest))
        for fqn, bn_fqn, code, rest in swaps:
            conv = model.get_submodule(fqn)
            bn = model.get_submodule(bn_fqn) if bn_fqn else None
            model.set_submodule(fqn, GatedConv(conv, bn, SELECTORS[code](conv, rest, shared), code, rest, bn_index=
                                               names.index(bn_fqn) if bn_fqn else -1))
            if bn_fqn:
                model.set_submodule(bn_fqn, nn.Identity())
        return model

    return build


# --- the selectors of the dynamic methods (here so that a saved model loads without the method modules) ----
FBS, DRS, RNP = 1, 2, 3


class SaliencySelector(nn.Module):
    """FBS (Gao et al. 2019, eq. 3-6): s = ReLU(W · mean_hw|x| + b), k-WTA keeps the ``k`` largest; s scales.

    ``last_saliency`` keeps the (differentiable) saliencies of the latest forward for the L1 term.
    """

    def __init__(self, conv: nn.Conv2d, k: int):
        super().__init__()
        self.k = int(k)
        self.fc = nn.Linear(conv.in_channels, conv.out_channels)
        self.last_saliency: torch.Tensor | None = None

    def forward(self, x):
        s = F.relu(self.fc(x.abs().mean((2, 3))))
        self.last_saliency = s
        return topk_mask(s.detach(), self.k) & (s.detach() > 0), s

    def macs(self, x) -> int:
        return self.fc.in_features * self.fc.out_features


@register_selector(FBS)
def _fbs(conv, config, shared):
    return SaliencySelector(conv, config[0])


def sparse_projection(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Achlioptas' sparse Johnson-Lindenstrauss matrix: sqrt(3/rows) x {+1, 0, -1} with probabilities
    1/6, 2/3, 1/6, so that E[P^T P] = I (a projection that preserves inner products on average)."""
    g = torch.Generator().manual_seed(int(seed))
    u = torch.rand(rows, cols, generator=g)
    sign = torch.where(u < 1 / 6, 1.0, torch.where(u < 1 / 3, -1.0, 0.0))
    return sign * math.sqrt(3.0 / rows)


class ProjectionSelector(nn.Module):
    """DSG's dimension-reduction search (Liu et al. 2019, sec. 3.2): the conv evaluated on a random projection
    of its input channels, conv(P x, W P^T) ~ conv(x, W), gives cheap estimates of the outputs; the ``k``
    channels with the largest estimated mean activation (after the unit's BN and a ReLU) are kept. The unit
    masks before and after its BN (double-mask selection, sec. 3.3)."""

    double_mask = True

    def __init__(self, conv: nn.Conv2d, k: int, dim: int, seed: int):
        super().__init__()
        self.k, self.dim = int(k), int(dim)
        self.register_buffer("proj", sparse_projection(self.dim, conv.in_channels, seed))
        # the projected weights W P^T: refreshed by every training forward, read in eval
        self.register_buffer("wproj", torch.einsum("ockl,jc->ojkl", conv.weight.detach(), self.proj))
        self._conv = [conv]  # not a submodule: the unit owns the conv
        self._unit: list = []  # set by the unit's owner: the GatedConv (for its BN affine)

    def estimate(self, x: torch.Tensor) -> torch.Tensor:
        conv = self._conv[0]
        with torch.no_grad():
            if self.training:
                self.wproj.copy_(torch.einsum("ockl,jc->ojkl", conv.weight, self.proj))
            xp = torch.einsum("kc,bchw->bkhw", self.proj, x)
            y = conv._conv_forward(xp, self.wproj, conv.bias)
            if self._unit:
                a, b = self._unit[0]._bn_affine()
                if a is not None:
                    y = y * a[None, :, None, None] + b[None, :, None, None]
        return y

    def forward(self, x):
        score = F.relu(self.estimate(x)).mean((2, 3))
        return topk_mask(score, self.k), None

    def macs(self, x) -> int:
        conv = self._conv[0]
        h, w = x.shape[2], x.shape[3]
        ho, wo = self._unit[0]._out_hw(x) if self._unit else (h, w)
        kh, kw = conv.kernel_size
        return self.dim * conv.in_channels * h * w + self.dim * conv.out_channels * kh * kw * ho * wo


@register_selector(DRS)
def _drs(conv, config, shared):
    return ProjectionSelector(conv, config[0], config[1], config[2])


class RNPAgent(nn.Module):
    """RNP's decision network (Lin et al. 2017, sec. 3): one GRU cell shared by all layers reads each layer's
    encoded feature map and a linear head gives the Q-values of the ``actions`` choices (compute the first
    1..actions channel groups). Greedy at test time; epsilon-greedy while training. Records each forward's
    Q-values and actions (``trace``) for the Q-learning update."""

    def __init__(self, hidden: int, actions: int):
        super().__init__()
        self.cell = nn.GRUCell(hidden, hidden)
        self.head = nn.Linear(hidden, actions)
        self.register_buffer("cap", torch.tensor(actions))  # actions >= cap are never taken (a MACs ceiling)
        self.epsilon = 0.0
        self.h: torch.Tensor | None = None
        self.trace: list = []
        self.greedy: torch.Tensor | None = None  # (B,) inputs whose every decision of this forward was greedy
        self.forced: torch.Tensor | None = None  # (B, layers) actions to take instead (tests, exactness checks)

    def step(self, layer: int, enc: torch.Tensor) -> torch.Tensor:
        if layer == 0 or self.h is None or self.h.shape[0] != enc.shape[0]:
            self.h, self.trace = enc.new_zeros(enc.shape[0], self.cell.hidden_size), []
        self.h = self.cell(enc, self.h)
        q = self.head(self.h)
        if self.forced is not None:
            a = self.forced[:, layer].to(enc.device)
        else:
            cap = int(self.cap)
            a = q.detach()[:, :cap].argmax(1)
            if self.training and self.epsilon > 0:
                explore = torch.rand(a.shape[0], device=a.device) < self.epsilon
                a = torch.where(explore, torch.randint(0, cap, a.shape, device=a.device), a)
        self.trace.append((q, a))
        greedy = a == q.detach()[:, :int(self.cap)].argmax(1)
        self.greedy = greedy if layer == 0 or self.greedy is None else self.greedy & greedy
        return a


class GroupSelector(nn.Module):
    """RNP's per-layer gate: encode the layer input (global average pool + linear), ask the shared agent for
    an action a, keep the first (a + 1) of ``groups`` ordered channel groups."""

    def __init__(self, conv: nn.Conv2d, groups: int, layer: int, hidden: int, agent: RNPAgent):
        super().__init__()
        self.groups, self.layer = int(groups), int(layer)
        self.encode = nn.Linear(conv.in_channels, hidden)
        self.n_out = conv.out_channels
        if layer == 0:
            self.agent = agent  # owned (saved) by the first gated layer; the others hold a reference
        else:
            self._agent = [agent]

    def get_agent(self) -> RNPAgent:
        return self.agent if self.layer == 0 else self._agent[0]

    def forward(self, x):
        a = self.get_agent().step(self.layer, F.relu(self.encode(x.detach().mean((2, 3)))))
        size = math.ceil(self.n_out / self.groups)
        return prefix_mask(torch.clamp((a + 1) * size, max=self.n_out), self.n_out), None

    def macs(self, x) -> int:
        agent = self.get_agent()
        hid = agent.cell.hidden_size
        return self.encode.in_features * hid + 6 * hid * hid + hid * agent.head.out_features


@register_selector(RNP)
def _rnp(conv, config, shared):
    groups, layer, hidden = config
    if "rnp_agent" not in shared:
        shared["rnp_agent"] = RNPAgent(hidden, groups)
    return GroupSelector(conv, groups, layer, hidden, shared["rnp_agent"])
