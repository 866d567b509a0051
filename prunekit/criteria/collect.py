"""One calibration collector: a single pass of calibration batches through a model, capturing what the
data-driven criteria and methods read.

:func:`collect` runs ``calib`` (an iterable of ``(inputs, targets)`` pairs) once through ``model`` in eval
mode and captures any combination of

- the outputs / inputs of named modules (raw tensors, optionally capped at ``cap`` examples per module),
- the gradients of the loss w.r.t. those outputs / inputs (an input's gradient flows through that module
  only: a tensor read by several layers gets one gradient per reader),
- parameter gradients, summed over the batches and, with ``per_batch``, one copy per batch,
- streaming per-channel reductions of outputs or inputs (sum, sum of ``|x|``, count of exact zeros, number
  of values: means and APoZ-like fractions) whose memory does not grow with the number of batches,
- input Gram matrices ``X^T X`` of Linear/Conv2d layers over the rows the layer multiplies by its weight
  (the layer-wise Hessian of OBS / L-OBS and the normal equations of ThiNet-style reconstruction),

and hands each batch's raw captures to ``on_batch`` for reductions of the caller's own. Batches are moved to
the model's device, every statistic is kept on the CPU, and the model comes back exactly as it was: train /
eval flags, ``.grad`` fields and ``requires_grad`` restored and every hook removed, also when a batch raises.
``on_input`` / ``on_output`` see the live tensors of the named modules during the forward (for data-flow
tracers that need tensor identity); they must not change them.

Example:
    >>> import torch
    >>> from torch import nn
    >>> m = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    >>> cal = collect(m, [(torch.ones(4, 2), None)], stats=["1"], gram=["0"])
    >>> cal.stats["1"].count.tolist(), cal.gram_rows["0"]
    ([4, 4, 4], 4)
    >>> cal.gram["0"].tolist()   # four rows of (1, 1)
    [[4.0, 4.0], [4.0, 4.0]]
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .._registry import closest
from ..errors import ConfigError
from ..graph.oplog import model_lock
from ..graph.trace import call_model, model_device, move_to

__all__ = ["Calibration", "ChannelStats", "collect", "collect_for_scoring", "layer_rows", "channel_first",
           "default_loss", "sampled_label_loss"]


def _logits(outputs) -> torch.Tensor:
    """The logits of a model's outputs: a tensor, its ``.logits`` or the first element of a tuple."""
    logits = outputs
    if not isinstance(logits, torch.Tensor):
        logits = getattr(outputs, "logits", None)
        if logits is None and isinstance(outputs, (tuple, list)):
            logits = outputs[0]
    return logits


def default_loss(outputs, targets):
    """Cross-entropy of the logits (a tensor, ``.logits`` or the first element of a tuple); with no targets,
    the mean square of the outputs (a label-free loss that still gives gradients)."""
    logits = _logits(outputs)
    if targets is None:
        return logits.float().pow(2).mean()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def sampled_label_loss(generator: torch.Generator | None = None) -> Callable:
    """A ``loss_fn`` for :func:`collect` whose gradients estimate the *true* Fisher: the cross-entropy of the
    logits against labels drawn from the model's own predictive ``softmax(logits)`` (``generator`` makes the
    draws reproducible); the data's targets are not read.

    Example:
        >>> loss = sampled_label_loss(torch.Generator().manual_seed(0))
        >>> float(loss(torch.tensor([[0.0, 50.0]]), None)) < 1e-6   # the model is sure: label 1 is drawn
        True
    """

    def loss(outputs, targets):
        logits = _logits(outputs)
        flat = logits.reshape(-1, logits.shape[-1])
        with torch.no_grad():
            probs = torch.softmax(flat.detach().double().cpu(), dim=-1)
            y = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(flat.device)
        return F.cross_entropy(flat, y)

    return loss


def channel_first(t: torch.Tensor, module: nn.Module | None) -> torch.Tensor:
    """A module's output or input as ``[channels, samples*positions]``: linear layers (and any 2-D tensor)
    put features last, convolutions and norms at dim 1."""
    last = isinstance(module, (nn.Linear, nn.Embedding)) or type(module).__name__ == "Conv1D" or t.dim() < 3
    d = t.dim() - 1 if last else 1
    return t.movedim(d, 0).reshape(t.shape[d], -1)


def layer_rows(module: nn.Module, x: torch.Tensor, bias: bool = True) -> torch.Tensor:
    """The rows a Linear / Conv2d layer multiplies by its 2-D weight view ``[out, in*k]``, float64, with a
    trailing column of ones for the bias when ``bias``: ``[n, d (+1)]`` (Conv2d: one row per image and
    output position, the unfolded patch in the weight's ``(channel, kh, kw)`` order)."""
    if isinstance(module, nn.Linear):
        rows = x.reshape(-1, x.shape[-1])
    elif isinstance(module, nn.Conv2d):
        if module.groups != 1 or isinstance(module.padding, str):
            raise ConfigError(f"a layer-input Gram matrix (layer-wise Hessian) covers Conv2d with groups=1 and "
                              f"numeric padding; a layer has groups={module.groups}, padding={module.padding!r}: "
                              f"ignore it (ignore=[...])")
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding,
                        stride=module.stride)  # [N, C*kh*kw, L]
        rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    else:
        raise ConfigError(f"a layer-input Gram matrix covers Linear and Conv2d layers, not "
                          f"{type(module).__name__}; ignore it (ignore=[...])")
    if bias:
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
    return rows.double()


@dataclasses.dataclass
class ChannelStats:
    """Streaming per-channel reductions of one module's outputs (or inputs), on the CPU, float64.

    ``sum`` / ``abs_sum``: sums of the values / of their magnitudes; ``zeros``: how many values are exactly 0
    (APoZ = ``zeros / count``); ``count``: values seen per channel (examples x positions)."""

    sum: torch.Tensor
    abs_sum: torch.Tensor
    zeros: torch.Tensor
    count: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.count.clamp_min(1)

    @property
    def abs_mean(self) -> torch.Tensor:
        return self.abs_sum / self.count.clamp_min(1)

    @property
    def zero_fraction(self) -> torch.Tensor:
        return self.zeros.double() / self.count.clamp_min(1)

    def add_(self, cf: torch.Tensor) -> None:
        cf = cf.detach()
        self.sum += cf.double().sum(1).cpu()
        self.abs_sum += cf.double().abs().sum(1).cpu()
        self.zeros += (cf == 0).sum(1).cpu()
        self.count += cf.shape[1]


@dataclasses.dataclass
class Calibration:
    """What one :func:`collect` pass captured (every tensor on the CPU, detached).

    ``outputs`` / ``inputs`` / ``output_grads`` / ``input_grads``: ``{module fqn: [tensor per call]}`` (raw,
    at most ``cap`` examples each); ``grads``: ``{param fqn: gradient summed over batches}``;
    ``batch_grads``: ``{param fqn: [gradient of each batch]}``; ``stats`` / ``input_stats``:
    ``{module fqn: ChannelStats}``; ``gram``: ``{module fqn: sum of x x^T}`` over ``gram_rows[fqn]`` rows;
    ``calls``: module fqns in the order they ran (hooked modules only); ``batches``: batches run."""

    outputs: dict = dataclasses.field(default_factory=dict)
    inputs: dict = dataclasses.field(default_factory=dict)
    output_grads: dict = dataclasses.field(default_factory=dict)
    input_grads: dict = dataclasses.field(default_factory=dict)
    grads: dict = dataclasses.field(default_factory=dict)
    batch_grads: dict = dataclasses.field(default_factory=dict)
    stats: dict = dataclasses.field(default_factory=dict)
    input_stats: dict = dataclasses.field(default_factory=dict)
    gram: dict = dataclasses.field(default_factory=dict)
    gram_rows: dict = dataclasses.field(default_factory=dict)
    calls: list = dataclasses.field(default_factory=list)
    batches: int = 0

    def hessian(self, fqn: str) -> torch.Tensor:
        """``mean(x x^T)`` of a layer's rows (the layer-wise Hessian of L-OBS)."""
        return self.gram[fqn] / self.gram_rows[fqn]


def _first_tensor(args) -> torch.Tensor | None:
    return next((a for a in args if isinstance(a, torch.Tensor)), None)


def _names(model: nn.Module, names, what: str) -> list:
    named = dict(model.named_modules())
    out = []
    for n in names or ():
        if n not in named:
            hint = closest(str(n), [k for k in named if k])
            raise ConfigError(f"{what}: {n!r} is not a module of the model"
                              + (f"; did you mean {hint!r}?" if hint else "")
                              + "; name modules by their path in model.named_modules()")
        if n not in out:
            out.append(n)
    return out


def _capped(store: dict, name: str, t: torch.Tensor, cap: int | None, kept: dict) -> None:
    """Append ``t`` (CPU, detached) to ``store[name]`` keeping at most ``cap`` examples (dim 0) in all."""
    if cap is not None:
        room = cap - kept.get(name, 0)
        if room <= 0:
            return
        t = t[:room]
        kept[name] = kept.get(name, 0) + (t.shape[0] if t.dim() else 1)
    store.setdefault(name, []).append(t.detach().cpu())


def collect(model: nn.Module, calib: Iterable, *, outputs=(), inputs=(), output_grads=(), input_grads=(),
            param_grads: bool | Iterable[str] = False, per_batch: bool = False, stats=(), input_stats=(),
            gram=(), gram_bias: bool = False, max_rows: int | None = None, cap: int | None = None,
            loss_fn: Callable | None = None, on_batch: Callable | None = None, keep: bool = True,
            on_input: Callable | None = None, on_output: Callable | None = None, watch=()) -> Calibration:
    """Run ``calib`` once through ``model`` and return a :class:`Calibration` with what was asked for.

    ``outputs``, ``inputs``, ``output_grads``, ``input_grads``, ``stats`` (per-channel reductions of the
    outputs), ``input_stats`` (of the inputs, e.g. post-activation statistics as the next layer reads them),
    ``gram`` (:func:`layer_rows` Gram matrices, ``gram_bias`` appending the bias column, at most
    ``max_rows`` rows per layer) and ``watch`` take module fqns; an unknown name is refused with the closest
    one. ``param_grads``: True for every parameter, or an iterable of parameter fqns; ``per_batch`` also
    keeps each batch's gradient. Gradients (parameter, output or input) run a backward of
    ``loss_fn(outputs, targets)`` (default :func:`default_loss`) per batch; otherwise the pass runs without
    autograd. ``cap``: at most that many examples of raw tensors per module. ``on_batch(record)``, called
    after every batch with a :class:`Calibration` holding that batch's raw captures and gradients (``keep=
    False`` then drops them from the result). ``on_input(fqn, args)`` / ``on_output(fqn, args, out)`` are
    called on the live tensors of the modules in ``watch`` (and ``on_input("", args)`` for the model input
    when ``""`` is watched).
    """
    if calib is None:
        raise ConfigError("calib=None: this pass needs calibration data; pass calib=[(inputs, targets), ...]")
    named = dict(model.named_modules())
    params = dict(model.named_parameters())
    outputs, inputs = _names(model, outputs, "outputs"), _names(model, inputs, "inputs")
    output_grads, input_grads = _names(model, output_grads, "output_grads"), _names(model, input_grads, "input_grads")
    stats, input_stats = _names(model, stats, "stats"), _names(model, input_stats, "input_stats")
    gram, watch = _names(model, gram, "gram"), _names(model, watch, "watch")
    if param_grads is True:
        grad_params = list(params)
    else:
        grad_params = list(param_grads or ())
        bad = [f for f in grad_params if f not in params]
        if bad:
            hint = closest(bad[0], params)
            raise ConfigError(f"param_grads: {bad[0]!r} is not a parameter of the model"
                              + (f"; did you mean {hint!r}?" if hint else ""))
    need_grad = bool(grad_params or output_grads or input_grads)
    loss_fn = loss_fn or default_loss
    result = Calibration()
    kept: dict = {}
    batch = Calibration()  # the current batch's raw captures
    slots: dict = {}  # (kind, name) -> [grad per call], filled by tensor hooks during backward

    def pre_hook(mod, args, name):
        if on_input is not None and name in watch:
            on_input(name, args)
        x = _first_tensor(args)
        if x is None:
            return None
        if name in inputs:
            batch.inputs.setdefault(name, []).append(x.detach().cpu())
        if name in input_stats:
            cf = channel_first(x.detach(), mod)
            result.input_stats.setdefault(name, _zero_stats(cf.shape[0])).add_(cf)
        if name in gram:
            rows = layer_rows(mod, x.detach(), gram_bias)
            n = result.gram_rows.get(name, 0)
            if max_rows is not None:
                rows = rows[: max(0, max_rows - n)]
            h = (rows.T @ rows).cpu()
            result.gram[name] = h if name not in result.gram else result.gram[name] + h
            result.gram_rows[name] = n + rows.shape[0]
        if name in input_grads and x.requires_grad:
            alias = x.view_as(x)  # a node of its own: its gradient flows through this module only
            slot = slots.setdefault(("in", name), [])
            slot.append(None)
            i = len(slot) - 1
            alias.register_hook(lambda g, slot=slot, i=i: slot.__setitem__(i, g.detach().cpu()))
            i0 = next(k for k, a in enumerate(args) if a is x)
            return (*args[:i0], alias, *args[i0 + 1:])
        return None

    def post_hook(mod, args, out, name):
        result.calls.append(name)
        if on_output is not None and name in watch:
            on_output(name, args, out)
        if not isinstance(out, torch.Tensor):
            return None
        if name in outputs:
            batch.outputs.setdefault(name, []).append(out.detach().cpu())
        if name in stats:
            cf = channel_first(out.detach(), mod)
            result.stats.setdefault(name, _zero_stats(cf.shape[0])).add_(cf)
        if name in output_grads and out.requires_grad:
            slot = slots.setdefault(("out", name), [])
            slot.append(None)
            i = len(slot) - 1
            out.register_hook(lambda g, slot=slot, i=i: slot.__setitem__(i, g.detach().cpu()))
        return None

    hooked = [n for n in named if n in set(outputs + inputs + output_grads + input_grads + stats + input_stats
                                           + gram + watch)]
    with model_lock(model):  # another thread working on this model waits: its flags, gradients, hooks
        saved_grads = {p: p.grad for p in model.parameters()}
        saved_req = {p: p.requires_grad for p in model.parameters()}
        modes = {m: m.training for m in model.modules()}
        device = model_device(model)
        hooks = []
        try:
            for n in hooked:
                mod = named[n]
                hooks.append(mod.register_forward_pre_hook(lambda m, a, n=n: pre_hook(m, a, n)))
                hooks.append(mod.register_forward_hook(lambda m, a, o, n=n: post_hook(m, a, o, n)))
            model.eval()
            for item in calib:
                if not (isinstance(item, (tuple, list)) and len(item) == 2):
                    raise ConfigError(f"calib must yield (inputs, targets) pairs, got {type(item).__name__}")
                x, y = move_to(item, device)  # calibration batches may sit on the CPU next to a GPU model
                batch = Calibration()
                slots.clear()
                if need_grad:
                    for p in params.values():
                        p.grad = None
                    with torch.enable_grad():
                        loss_fn(call_model(model, x), y).backward()
                    for f in grad_params:
                        p = params[f]
                        if p.grad is not None:
                            g = p.grad.detach().cpu()
                            result.grads[f] = result.grads[f] + g if f in result.grads else g.clone()
                            batch.grads[f] = g
                            if per_batch:
                                result.batch_grads.setdefault(f, []).append(g.clone())
                    for (kind, name), gs in slots.items():
                        got = [g for g in gs if g is not None]
                        if got:
                            (batch.input_grads if kind == "in" else batch.output_grads)[name] = got
                else:
                    with torch.no_grad():
                        call_model(model, x)
                result.batches += 1
                if on_batch is not None:
                    on_batch(batch)
                if keep:
                    for field in ("outputs", "inputs", "output_grads", "input_grads"):
                        for name, ts in getattr(batch, field).items():
                            for t in ts:
                                _capped(getattr(result, field), name, t, cap, kept.setdefault(field, {}))
        finally:
            for h in hooks:
                h.remove()
            slots.clear()
            for p, g in saved_grads.items():
                p.grad = g
            for p, r in saved_req.items():
                if p.requires_grad != r:
                    p.requires_grad_(r)
            for m, t in modes.items():
                m.training = t
    if not result.batches:
        raise ConfigError("calib is empty: it gave no batch; pass calib=[(inputs, targets), ...] with at least "
                          "one batch")
    return result


def _zero_stats(c: int) -> ChannelStats:
    return ChannelStats(torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64),
                        torch.zeros(c, dtype=torch.long), torch.zeros(c, dtype=torch.long))


def collect_for_scoring(model: nn.Module, graph, calib, loss_fn, need_grads: bool, need_acts: bool,
                        per_batch: bool = False):
    """The statistics the channel-scoring engine reads, as ``(grads, acts, inputs)``: summed gradients per
    parameter fqn (with ``per_batch`` also ``grads["<fqn>#batches"]``, a list per batch), and the outputs
    and inputs (lists per call) of every module owning a member of ``graph``'s groups."""
    if calib is None:
        raise ConfigError("this criterion needs calibration data: pass calib=[(inputs, targets), ...]")
    named = dict(model.named_modules())
    owners = []
    if need_acts:
        owners = sorted({m.fqn.rpartition(".")[0] for g in graph.groups for m in g.members} & set(named))
    cal = collect(model, calib, outputs=owners, inputs=owners, param_grads=bool(need_grads),
                  per_batch=per_batch and bool(need_grads), loss_fn=loss_fn)
    grads = dict(cal.grads)
    for f, bs in cal.batch_grads.items():
        grads[f + "#batches"] = bs
    return grads, cal.outputs, cal.inputs
