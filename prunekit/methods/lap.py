"""Lookahead pruning (LAP).

Paper: "Lookahead: A Far-sighted Alternative of Magnitude-based Pruning", Sejun Park, Jaeho Lee, Sangwoo Mo,
Jinwoo Shin. ICLR 2020. https://arxiv.org/abs/2002.04809

Magnitude pruning asks how much removing a weight changes its own layer. LAP looks one layer further on
each side: a weight joins input neuron ``j`` to output neuron ``k``, so the damage of removing it is
carried into the network through everything that feeds ``j`` and everything ``k`` feeds. Its score is
``|w| * ||W_prev[j, :]|| * ||W_next[:, k]||``, the magnitude scaled by the norm of the weights entering
the input neuron in the previous layer and of those leaving the output neuron in the next layer (1 when
there is no such layer). We rank with the squared score, which orders weights the same way. A weight
whose input neuron is dead (all incoming weights pruned) therefore scores zero however large it is. Layers
are pruned to the same sparsity each round and the network is retrained between rounds.

"Previous" and "next" are taken from the data flow of one traced forward, not from module order: a layer
fed by several layers sums their squared norms, and a residual (identity) connection counts as a layer
whose weights are the identity, adding 1 (as the authors' code treats skip connections).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import ConfigError
from ..criteria.collect import collect
from ..masks import get_masks, register_weight_criterion, sparsify_
from ..train import fit
from ..train.config import method_train_config
from ..schedules.functions import geometric_rounds
from ._config import MethodConfig, option
from ._registry import MethodResult, RunContext, Telemetry, register_method

log = logging.getLogger(__name__)

__all__ = ["DataFlow", "trace_data_flow", "lookahead_scores", "lap_scores", "model_lap_scores", "score_lap",
           "LAPConfig", "run_lap"]

LAP_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
IDENTITY = "identity"  # a residual connection: a neighbour whose weights are the identity (norm 1 per unit)
_ADDS = frozenset({"add", "add_", "sub", "sub_", "__add__", "__iadd__", "__radd__", "__sub__", "__isub__",
                   "__rsub__"})


@dataclass
class DataFlow:
    """Which Linear/Conv layers feed which, from one traced forward. ``prev[name]`` lists the layers whose
    output reaches ``name``'s input through weight-free ops (and ``IDENTITY`` for a residual connection);
    ``next[name]`` the layers (and ``IDENTITY``) its output reaches the same way."""

    layers: dict  # name -> module, in module order
    prev: dict = field(default_factory=dict)
    next: dict = field(default_factory=dict)


class _FlowMode(TorchFunctionMode):
    """Tags every tensor with the layers that produced it (``P``) and every layer upstream of it (``A``)."""

    def __init__(self):
        super().__init__()
        self.tags: dict[int, tuple[frozenset, frozenset]] = {}
        self.alive: list = []  # keeps tagged tensors alive so their ids stay unique during the forward
        self.identity_of: set = set()  # layers whose output also flows on through a residual connection

    def tag(self, t, p, a):
        self.tags[id(t)] = (frozenset(p), frozenset(a))
        self.alive.append(t)

    def get(self, t):
        return self.tags.get(id(t)) if isinstance(t, torch.Tensor) else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tags = [tg for t in _tensors((args, kwargs)) if (tg := self.get(t)) is not None]
        if not tags:
            return out
        if getattr(func, "__name__", "") in _ADDS and len(tags) == 2:
            p, a = self._merge_add(*tags)
        else:
            p = frozenset().union(*(tg[0] for tg in tags))
            a = frozenset().union(*(tg[1] for tg in tags))
        targets = list(_tensors(out))
        if getattr(func, "__name__", "") == "__setitem__" and args and isinstance(args[0], torch.Tensor):
            targets.append(args[0])  # x[i] = y writes y into x
        for t in targets:
            self.tag(t, p, a)
        return out

    def _merge_add(self, x, y):
        """``x + y``: an operand whose producers are all upstream of the other operand is a skip (identity)."""
        a = x[1] | y[1]
        for main, skip in ((x, y), (y, x)):
            real = skip[0] - {IDENTITY}
            if main[0] != skip[0] and real <= main[1]:
                self.identity_of |= real
                return main[0] | {IDENTITY}, a
        return x[0] | y[0], a


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def trace_data_flow(model: nn.Module, example_inputs) -> DataFlow:
    """One forward on ``example_inputs`` (no gradients, eval mode, modes restored) recording LAP's neighbours.

    Example:
        >>> m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> flow = trace_data_flow(m, torch.randn(1, 3))
        >>> flow.prev["2"], flow.next["0"]
        (['0'], ['2'])
    """
    layers = {n: m for n, m in model.named_modules() if isinstance(m, LAP_LAYER_TYPES)}
    mode = _FlowMode()
    prev = {n: set() for n in layers}
    nxt = {n: set() for n in layers}

    def pre(name, args):
        if name == "":  # the model's own inputs: tagged as coming from no layer
            for t in _tensors(args):
                mode.tag(t, (), ())
        if name not in layers:
            return
        tg = mode.get(args[0]) if args else None
        if tg is not None:
            prev[name] |= tg[0]
            for p in tg[0] - {IDENTITY}:
                nxt[p].add(name)

    def post(name, args, out):
        if name in layers:
            tg = mode.get(args[0]) if args else None
            mode.tag(out, {name}, (tg[1] if tg else frozenset()) | {name})

    with mode:
        collect(model, [(example_inputs, None)], watch=["", *layers], on_input=pre, on_output=post)
    for name in mode.identity_of:
        nxt[name].add(IDENTITY)
    order = list(layers)
    key = lambda n: (n == IDENTITY, order.index(n) if n in order else 0)  # noqa: E731
    return DataFlow(layers, {n: sorted(v, key=key) for n, v in prev.items()},
                    {n: sorted(v, key=key) for n, v in nxt.items()})


def chain_flow(names: list[str]) -> tuple[dict, dict]:
    """``(prev, next)`` of a plain chain: each layer's neighbours are the ones before and after it."""
    prev = {n: [names[i - 1]] if i else [] for i, n in enumerate(names)}
    nxt = {n: [names[i + 1]] if i + 1 < len(names) else [] for i, n in enumerate(names)}
    return prev, nxt


def _out_norms(w_prev: torch.Tensor, n_in: int, flatten: bool) -> torch.Tensor | None:
    """Squared norm of each output neuron/channel of the previous layer, expanded to ``n_in`` inputs.

    A conv feeding a linear layer through a flatten (``flatten``) gives ``n_in = channels * h * w``: each
    channel's norm is repeated over its ``h * w`` positions (channel-major flatten). None when the shapes do
    not connect.
    """
    norms = w_prev.pow(2).flatten(1).sum(1)  # [out_prev]
    if norms.numel() == n_in:
        return norms
    if flatten and n_in % norms.numel() == 0:
        return norms.repeat_interleave(n_in // norms.numel())
    return None


def _in_norms(w_next: torch.Tensor, n_out: int, flatten: bool) -> torch.Tensor | None:
    """Squared norm of the next layer's weights leaving each of this layer's ``n_out`` outputs."""
    n_in_next = w_next.shape[1]
    if n_in_next == n_out:
        return w_next.pow(2).transpose(0, 1).flatten(1).sum(1)  # [n_out]
    if flatten and n_in_next % n_out == 0:  # conv -> flatten -> linear: [o, n_out * hw]
        return w_next.reshape(w_next.shape[0], n_out, -1).pow(2).sum((0, 2))
    return None


def lookahead_scores(weights: dict[str, torch.Tensor], prev: dict, nxt: dict, *,
                     unmatched: list | None = None) -> dict[str, torch.Tensor]:
    """Squared lookahead scores of ``weights`` (``{name: [out, in, ...]}``) given each layer's neighbours.

    The previous factor of input ``j`` is the sum over ``prev[name]`` of the squared norms of the weights
    producing ``j`` (1 for ``IDENTITY``); the next factor of output ``k`` the sum over ``nxt[name]`` of the
    squared norms of the weights reading ``k`` (1 for ``IDENTITY``). A side with no neighbour is 1. A
    neighbour whose shape does not connect is skipped and its pair appended to ``unmatched``.
    """
    out = {}
    for name, w in weights.items():
        w = w.detach()
        n_out, n_in = w.shape[0], w.shape[1]
        shape_in = (1, n_in) + (1,) * (w.dim() - 2)
        shape_out = (n_out,) + (1,) * (w.dim() - 1)
        score = w.pow(2)
        for side, names, n, shape in (("prev", prev.get(name, ()), n_in, shape_in),
                                      ("next", nxt.get(name, ()), n_out, shape_out)):
            factor, found = torch.zeros(n, dtype=w.dtype, device=w.device), False
            for other in names:
                if other == IDENTITY:
                    factor, found = factor + 1.0, True
                    continue
                ow = weights[other].detach()
                if side == "prev":
                    part = _out_norms(ow, n, flatten=ow.dim() > 2 and w.dim() == 2)
                else:
                    part = _in_norms(ow, n, flatten=w.dim() > 2 and ow.dim() == 2)
                if part is None:
                    log.debug("LAP: %s and its %s neighbour %s do not connect; skipped", name, side, other)
                    if unmatched is not None:
                        unmatched.append((name, other))
                    continue
                factor, found = factor + part, True
            if found:
                score = score * factor.reshape(shape)
        out[name] = score
    return out


def lap_scores(weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """Squared lookahead scores of a chain of layer weights (Linear ``[out, in]`` or Conv ``[out, in, kh, kw]``).

    Pass the *effective* (already masked) weights, so pruned neighbours count as zero. A missing or
    unconnectable neighbour contributes a factor of 1.

    Example:
        >>> w1 = torch.tensor([[1.0, 1.0], [0.0, 0.0]])     # hidden neuron 1 receives nothing
        >>> w2 = torch.tensor([[3.0, 5.0]])
        >>> lap_scores([w1, w2])[1]                          # its outgoing 5.0 is worthless
        tensor([[18.,  0.]])
    """
    names = [str(i) for i in range(len(weights))]
    scores = lookahead_scores(dict(zip(names, weights)), *chain_flow(names))
    return [scores[n] for n in names]


def _fqn(name: str) -> str:
    return f"{name}.weight" if name else "weight"


def _effective_weights(model: nn.Module, flow: DataFlow) -> dict[str, torch.Tensor]:
    """``{layer name: weight}`` with the installed masks applied (pruned neighbours count as zero)."""
    masks = get_masks(model)
    return {n: m.weight.detach() * masks[_fqn(n)] if _fqn(n) in masks else m.weight.detach()
            for n, m in flow.layers.items()}


def model_lap_scores(model: nn.Module, flow: DataFlow, params, unmatched: list | None = None) -> dict:
    """``{param_fqn: squared LAP score}`` for ``params`` with neighbours from ``flow`` and masked weights."""
    by_name = lookahead_scores(_effective_weights(model, flow), flow.prev, flow.next, unmatched=unmatched)
    by_fqn = {_fqn(n): s for n, s in by_name.items()}
    missing = [f for f in params if f not in by_fqn]
    if missing:
        raise ConfigError(f"criterion='lap' scores Linear/Conv weights only; {missing} are not; "
                          "ignore those layers (ignore=[...])")
    return {f: by_fqn[f] for f in params}


@register_weight_criterion("lap", needs_calib=True)
def score_lap(model, params, *, calib=None, loss_fn=None, generator=None):
    """Weight criterion ``"lap"``: lookahead scores with neighbours traced on the first ``calib`` batch.

    Every Linear/Conv layer is a neighbour (ignored layers included); only ``params`` are scored. Masked
    weights count as zero, so iterating LAP sees the pruning of earlier rounds.
    """
    batch = next(iter(calib), None)
    if batch is None:
        raise ConfigError("criterion='lap' traces the data flow on calib[0]: pass calib=[(inputs, targets)]")
    return model_lap_scores(model, trace_data_flow(model, batch[0]), params)


@dataclass(frozen=True)
class LAPConfig(MethodConfig):
    rounds: int = option(5, ge=1)  # prune/retrain rounds, the same rate each round (entry's check: 5 x 50%)
    retrain_epochs: int = option(1, ge=0)  # masked retraining after every round but the last (entry: 1 epoch)
    global_: bool = False  # paper: layer-wise ratios; ours: True ranks the raw scores of all layers together
    exempt: tuple[Literal["first", "last"], ...] = ()  # ours: keep the first / last layer dense


def _kept_not_by_magnitude(before: dict, masks: dict) -> int:
    """Weights LAP kept that layer-wise magnitude, keeping as many per layer, would have pruned."""
    n = 0
    for f, mag in before.items():
        kept = masks[f].flatten()
        by_mag = torch.zeros_like(kept)
        by_mag[torch.topk(mag.flatten(), int(kept.sum()), sorted=False).indices] = True
        n += int((kept & ~by_mag).sum())
    return n


@register_method("lap", config=LAPConfig, kind="unstructured",
                 telemetry=Telemetry(
                     keys=("kept_not_by_magnitude", "layers_with_neighbours", "identity_links", "unmatched"),
                     engaged=lambda t: t["kept_not_by_magnitude"] > 0,
                     what="the lookahead factors keeping other weights than magnitude",
                     knob="LAP differs from magnitude only through neighbouring layers: prune a model with "
                          "connected Linear/Conv layers whose example_inputs reach them"))
def run_lap(ctx: RunContext, cfg: LAPConfig) -> MethodResult:
    """Iterative LAP: ``rounds`` x (score with LAP, prune to the round's sparsity, retrain)."""
    if cfg.retrain_epochs and cfg.rounds > 1 and ctx.train_data is None:
        raise ConfigError("lap retrains between rounds and needs train_data; pass train_data= or "
                          "options rounds=1 / retrain_epochs=0")
    example = ctx.example_inputs
    if example is None:
        batch = next(iter(ctx.calib or ctx.train_data or []), None)
        if batch is None:
            raise ConfigError("lap traces which layer feeds which on one input: pass example_inputs= (or calib)")
        example = batch[0]
    flow = trace_data_flow(ctx.model, example)
    train_cfg = method_train_config(ctx, cfg.retrain_epochs)
    history, differ, unmatched = [], 0, []
    for r, sparsity in enumerate(geometric_rounds(ctx.target_value, rounds=cfg.rounds)):
        scores = model_lap_scores(ctx.model, flow, [_fqn(n) for n in flow.layers], unmatched)
        before = {_fqn(n): w.abs() for n, w in _effective_weights(ctx.model, flow).items()}
        report = sparsify_(ctx.model, sparsity=sparsity, criterion="lap", scores=scores, allocation="global" if cfg.global_ else "uniform",
                           ignore=tuple(ctx.ignore), exempt=cfg.exempt)
        masks = get_masks(ctx.model)
        differ += _kept_not_by_magnitude({f: before[f] for f in report.layers}, masks)
        history.append({"round": r, "sparsity": report.sparsity})
        if r + 1 < cfg.rounds and cfg.retrain_epochs:
            fit(ctx.model, ctx.train_data, train_cfg)
    if unmatched:
        log.warning("lap: %d neighbour pairs do not line up channel for channel and were skipped: %s",
                    len(set(unmatched)), sorted(set(unmatched))[:5])
    return MethodResult(ctx.model, info={"rounds": history, "sparsity": history[-1]["sparsity"],
                                         "prev": flow.prev, "next": flow.next}, telemetry={
        "kept_not_by_magnitude": differ,
        "layers_with_neighbours": sum(bool(flow.prev[n] or flow.next[n]) for n in flow.layers),
        "identity_links": sum(v.count(IDENTITY) for v in flow.prev.values()),
        "unmatched": len(set(unmatched))})
