"""Layer-wise sequential calibration of a language model's decoder blocks (the driver of Wanda and SparseGPT).

One-shot pruning of a language model works block by block, as the SparseGPT and Wanda papers do:

1. find the model's repeated decoder blocks (:func:`decoder_blocks`: ``blocks`` of ``gpt-tiny``,
   ``model.layers`` of Hugging Face LLaMA-style models, ``transformer.h`` of GPT-2-style ones);
2. capture what the first block receives for every calibration batch (the hidden states *and* the keyword
   arguments the model hands each block: attention mask, position ids, rotary position embeddings), with a
   forward pre-hook that stops the forward by raising once the inputs are seen (:func:`capture_block_inputs`);
3. then, for each block in turn: hook its Linear layers and run the captured inputs through the block once,
   accumulating every layer's input statistics (:class:`LayerInputs`: the Gram matrix ``H = X^T X`` and the
   squared column norms ``||X_j||_2^2``), let the caller prune the block's layers from them, and run the
   inputs through the *pruned* block: its outputs are the next block's calibration inputs.

Only one block's inputs, outputs and statistics are alive at a time, on the model's device. The embeddings,
the final norm and the LM head are outside the blocks and are never handed to the caller.

Example:
    >>> import torch
    >>> from torch import nn
    >>> class LM(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.emb = nn.Embedding(10, 4)
    ...         self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))
    ...     def forward(self, idx):
    ...         x = self.emb(idx)
    ...         for b in self.blocks:
    ...             x = b(x)
    ...         return x
    >>> seen = []
    >>> rep = sequential_calibrate(LM(), [(torch.zeros(2, 3, dtype=torch.long), None)],
    ...                            lambda i, name, stats: seen.append((i, sorted(stats), stats[name].rows)))
    >>> seen, rep.blocks
    ([(0, ['blocks.0'], 6), (1, ['blocks.1'], 6)], 2)
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import time
from typing import Callable, Iterable

import torch
from torch import nn

from ..errors import ConfigError
from ..graph.tensors import call_model, model_device, move_to
from .collect import collect

log = logging.getLogger(__name__)

__all__ = ["BLOCK_PATHS", "decoder_blocks", "capture_block_inputs", "LayerInputs", "SequentialReport",
           "sequential_calibrate", "block_linears", "is_linear", "linear_weight", "BlockInput"]

#: where language models keep their repeated decoder blocks, tried in this order
BLOCK_PATHS = ("blocks", "model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers", "layers")

_CACHE_KEYS = ("cache", "past_key_value", "past_key_values", "layer_past")


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(path, blocks)``: the model's repeated decoder blocks; a ``ConfigError`` when it has none.

    Example:
        >>> decoder_blocks(nn.Sequential(nn.Linear(2, 2)))
        Traceback (most recent call last):
        ...
        prunekit.errors.ConfigError: model=Sequential is not a language model with repeated decoder blocks ...
    """
    for path in BLOCK_PATHS:
        try:
            mod = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(mod, nn.ModuleList) and len(mod) and any(is_linear(m) for m in mod.modules()):
            return path, mod
    raise ConfigError(f"model={type(model).__name__} is not a language model with repeated decoder blocks (looked "
                      f"for an nn.ModuleList of blocks with Linear layers at {', '.join(BLOCK_PATHS)}); these "
                      f"methods prune decoder-only language models (gpt-tiny, hf:llama-tiny): use a weight "
                      f"pruning method such as han-magnitude or l-obs for other models")


def is_linear(module: nn.Module) -> bool:
    """An ``nn.Linear``, or a Hugging Face ``Conv1D`` (GPT-2 style: the same map with its weight stored
    ``[in, out]``)."""
    return isinstance(module, nn.Linear) or (type(module).__name__ == "Conv1D" and hasattr(module, "nf")
                                             and getattr(module, "weight", None) is not None
                                             and module.weight.dim() == 2)


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight of a layer of :func:`is_linear` as ``[out, in]``: the parameter itself for ``nn.Linear``,
    its transposed view for ``Conv1D`` (in-place changes to the view change the parameter)."""
    return module.weight if isinstance(module, nn.Linear) else module.weight.t()


def block_linears(block: nn.Module, prefix: str = "") -> dict[str, nn.Module]:
    """``{fqn: layer}`` of the linear layers (:func:`is_linear`) of one block, in module order (fqns prefixed
    with ``prefix``); :func:`linear_weight` gives each one's weight as ``[out, in]``."""
    def join(n):
        return f"{prefix}.{n}" if prefix and n else (prefix or n)

    return {join(n): m for n, m in block.named_modules() if is_linear(m)}


class _Stop(Exception):
    """Raised by the capture hook to end the model's forward once the first block's inputs are seen."""


@dataclasses.dataclass
class BlockInput:
    """One calibration batch as a block receives it: the keyword arguments of its forward, hidden states
    under ``key`` (the name of the block's first parameter)."""

    kwargs: dict
    key: str

    @property
    def hidden(self) -> torch.Tensor:
        return self.kwargs[self.key]

    def with_hidden(self, h: torch.Tensor) -> "BlockInput":
        return BlockInput({**self.kwargs, self.key: h}, self.key)

    def __call__(self, block: nn.Module):
        """``block`` run on this input (hidden states positional, as the model passes them)."""
        return block(self.hidden, **{k: v for k, v in self.kwargs.items() if k != self.key})


class _BlockCall(nn.Module):
    """A block as a model of :func:`~prunekit.criteria.collect.collect`: its input is a :class:`BlockInput`."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, inp: BlockInput):
        return inp(self.block)


def _as_kwargs(block: nn.Module, args: tuple, kwargs: dict) -> tuple[dict, str]:
    params = [p for p in inspect.signature(block.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(args) > len(params) or not params:
        raise ConfigError(f"block {type(block).__name__} takes its inputs positionally beyond its named parameters; "
                          f"sequential calibration needs named block inputs")
    out = {p.name: a for p, a in zip(params, args)}
    out.update(kwargs)
    for k in _CACHE_KEYS:  # no key/value cache while calibrating: every batch is a fresh sequence
        if k in out:
            out[k] = None
    if "use_cache" in out:
        out["use_cache"] = False
    return out, params[0].name


@contextlib.contextmanager
def _no_cache(model: nn.Module):
    cfg = getattr(model, "config", None)
    old = getattr(cfg, "use_cache", None)
    if old:
        cfg.use_cache = False
    try:
        yield
    finally:
        if old:
            cfg.use_cache = old


def capture_block_inputs(model: nn.Module, block: nn.Module, calib: Iterable) -> list[BlockInput]:
    """What ``block`` receives for every calibration batch of ``model`` (the forward stops at the block).

    ``calib`` yields ``(inputs, targets)`` pairs; the captured tensors stay on the model's device."""
    if calib is None:
        raise ConfigError("calib=None: sequential calibration needs calibration batches; pass "
                          "calib=[(token_ids, targets), ...] (prunekit run --calib-batches N)")
    got: list[BlockInput] = []

    def hook(mod, args, kwargs):
        kw, key = _as_kwargs(mod, args, kwargs)
        got.append(BlockInput({k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}, key))
        raise _Stop

    device = model_device(model)
    modes = {m: m.training for m in model.modules()}
    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model.eval()
        with torch.no_grad(), _no_cache(model):
            for item in calib:
                if not (isinstance(item, (tuple, list)) and len(item) == 2):
                    raise ConfigError(f"calib must yield (inputs, targets) pairs, got {type(item).__name__}")
                try:
                    call_model(model, move_to(item[0], device))
                except _Stop:
                    continue
                raise ConfigError(f"model={type(model).__name__}: a calibration batch ran through the model without "
                                  f"reaching its first decoder block; the blocks must be called by the forward")
    finally:
        handle.remove()
        for m, t in modes.items():
            m.training = t
    if not got:
        raise ConfigError("calib is empty: it gave no batch; pass calib=[(token_ids, targets), ...] with at least "
                          "one batch")
    return got


@dataclasses.dataclass
class LayerInputs:
    """A Linear layer's input statistics over the calibration tokens of one block pass (float32, on the
    model's device): ``sq_norms[j] = ||X_j||_2^2`` (column ``j`` of the ``[rows, in]`` input matrix),
    ``gram = X^T X`` (``None`` unless asked for), ``rows`` the number of token rows seen."""

    sq_norms: torch.Tensor
    gram: torch.Tensor | None
    rows: int

    @property
    def norms(self) -> torch.Tensor:
        """``||X_j||_2`` per input column (Wanda's activation norm)."""
        return self.sq_norms.clamp_min(0).sqrt()


@dataclasses.dataclass
class SequentialReport:
    """What :func:`sequential_calibrate` did: the blocks' path and count, the layers handed over (in order),
    wall-clock and process CPU seconds per block and the calibration batches."""

    path: str
    blocks: int
    layers: list
    seconds: list
    batches: int
    cpu_seconds: list = dataclasses.field(default_factory=list)


def _block_outputs(block: nn.Module, inputs: list[BlockInput]) -> list[BlockInput]:
    outs = []
    for inp in inputs:
        out = inp(block)
        if not isinstance(out, torch.Tensor):
            out = out[0]  # HF blocks of older versions return (hidden_states, ...)
        outs.append(inp.with_hidden(out.detach()))
    return outs


def sequential_calibrate(model: nn.Module, calib: Iterable, prune_block: Callable[[int, str, dict], None], *,
                         gram: bool = False, layers: Callable[[str], bool] | None = None,
                         dtype: torch.dtype = torch.float32) -> SequentialReport:
    """Run the layer-wise sequential calibration of ``model`` (see the module docstring).

    For each block ``i`` (fqn ``name``) ``prune_block(i, name, stats)`` is called with ``stats = {layer fqn:
    LayerInputs}`` for the block's Linear layers that ``layers(fqn)`` accepts (all by default), measured on
    the outputs of the blocks before it *as already pruned*; it changes the layers in place. ``gram`` also
    accumulates ``X^T X`` per layer (SparseGPT's Hessian), else only the column norms (Wanda). The model's
    train/eval flags are restored; weights are changed only by ``prune_block``.
    """
    path, blocks = decoder_blocks(model)
    inputs = capture_block_inputs(model, blocks[0], calib)
    modes = {m: m.training for m in model.modules()}
    report = SequentialReport(path, len(blocks), [], [], len(inputs))
    try:
        model.eval()
        for i, block in enumerate(blocks):
            t0, c0 = time.perf_counter(), time.process_time()
            name = f"{path}.{i}"
            linears = {f: m for f, m in block_linears(block, name).items() if layers is None or layers(f)}
            local = {"block" + f[len(name):]: f for f in linears}  # names inside _BlockCall(block)
            stats: dict[str, LayerInputs] = {}

            def on_input(local_name, args, local=local, linears=linears, stats=stats):
                fqn = local[local_name]
                x = args[0].detach()
                x = x.reshape(-1, x.shape[-1]).to(dtype)
                s = stats.get(fqn)
                if s is None:
                    d = x.shape[1]
                    s = stats[fqn] = LayerInputs(x.new_zeros(d), x.new_zeros(d, d) if gram else None, 0)
                s.sq_norms += x.pow(2).sum(0)
                if gram:
                    s.gram.addmm_(x.T, x)
                s.rows += x.shape[0]

            if linears:  # one pass through the dense block: every layer's input statistics
                collect(_BlockCall(block), [(inp, None) for inp in inputs], watch=list(local), on_input=on_input)
                prune_block(i, name, stats)
                report.layers.extend(linears)
            with torch.no_grad():
                inputs = _block_outputs(block, inputs)  # the pruned block's outputs feed the next block
            del stats
            report.seconds.append(time.perf_counter() - t0)
            report.cpu_seconds.append(time.process_time() - c0)
            log.debug("sequential calibration: block %s done in %.2fs", name, report.seconds[-1])
    finally:
        for m, t in modes.items():
            m.training = t
    return report
