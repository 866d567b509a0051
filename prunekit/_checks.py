"""Input checks shared by the model-changing verbs (``plan``, ``prune_``, ``sparsify_``): no silent wrong model.

:func:`checked` wraps a verb so that, before it runs,

- a misspelt keyword is a :class:`~prunekit.errors.ConfigError` naming the closest valid one (not Python's
  bare ``TypeError``);
- a model on the meta device (no values) is refused with the fix;
- non-finite weights (NaN/Inf) are refused with the tensors named (``allow_nonfinite=True`` prunes anyway);
- the first calibration batch (``calib``) is run through the model: a batch that does not fit the model, or
  that gives non-finite activations, is refused naming ``calib``, the batch's shapes and the layers at fault;

and after it ran, the data-dependent control flow its traces met (a tensor value turned into a Python
bool/int/float or read out, :func:`prunekit.graph.trace.note_python_read`) is reported: ``Report.notes`` says
the plan covers the traced path only, and with ``calib`` the pruned model is run on every calibration batch
(the model is restored when one fails).

Example:
    >>> import torch, prunekit as pk
    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> with torch.no_grad():
    ...     m[0].weight[0, 0] = float("nan")
    >>> pk.sparsify_(m, sparsity=0.5)
    Traceback (most recent call last):
    ...
    prunekit.errors.ConfigError: model has non-finite weights (NaN or Inf) in 1 tensor: '0.weight'; ...
"""
from __future__ import annotations

import contextvars
import copy
import functools
import inspect
import logging

import torch
from torch import nn

from ._registry import closest
from .errors import ConfigError, PruneError, PrunekitError
from .criteria import CRITERIA
from .criteria.collect import default_loss  # the default calibration loss (one definition, in the collector)
from .graph.trace import PYTHON_READS_SINK, _SCALAR_READS, call_model, model_device, move_to

__all__ = ["checked", "check_model", "check_calib", "default_loss"]

log = logging.getLogger(__name__)
_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("prunekit_checks_active", default=False)


def _shapes(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"{tuple(x.shape)} {str(x.dtype).replace('torch.', '')}"
    if isinstance(x, (tuple, list)):
        return "(" + ", ".join(_shapes(v) for v in x) + ")"
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k!r}: {_shapes(v)}" for k, v in x.items()) + "}"
    return type(x).__name__


def check_model(model, *, allow_nonfinite: bool = False, verb: str = "prune") -> None:
    """Refuse a non-module, a model on the meta device, and (unless ``allow_nonfinite``) NaN/Inf weights."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model={type(model).__name__} is not a torch.nn.Module; pass the model itself "
                          f"(e.g. a torchvision or prunekit.models model)")
    if not isinstance(allow_nonfinite, bool):
        raise ConfigError(f"allow_nonfinite={allow_nonfinite!r} must be True or False")
    tensors = [(n, t) for n, t in model.named_parameters()] + [(n, t) for n, t in model.named_buffers()]
    meta = [n for n, t in tensors if t.is_meta]
    if meta:
        raise ConfigError(f"model has {len(meta)} tensors on the meta device (shapes without values), e.g. "
                          f"{meta[0]!r}; a {verb} needs real weights: materialise them first, e.g. "
                          f"model.to_empty(device='cpu') then model.load_state_dict(...), or build the model "
                          f"without device='meta' / init_empty_weights")
    if allow_nonfinite:
        return
    bad = []
    params = {n for n, _ in model.named_parameters()}
    with torch.no_grad():
        for n, t in tensors:
            if (t.is_floating_point() or t.is_complex()) and t.numel():
                # a buffer may hold +-inf on purpose (clamp bounds such as input_min/input_max); NaN never,
                # and BatchNorm statistics never hold inf
                strict = n in params or n.endswith(("running_mean", "running_var"))
                if not bool((torch.isfinite(t) if strict else ~torch.isnan(t)).all()):
                    bad.append(n)
    if bad:
        shown = ", ".join(repr(n) for n in bad[:8]) + (f", +{len(bad) - 8}" if len(bad) > 8 else "")
        raise ConfigError(f"model has non-finite weights (NaN or Inf) in {len(bad)} tensor"
                          f"{'s' if len(bad) > 1 else ''}: {shown}; the result would compute NaN too. "
                          f"Reload the weights (e.g. the checkpoint before the training step that diverged), or "
                          f"pass allow_nonfinite=True to {verb} anyway")


def _first_batch(calib):
    """The first batch of a re-iterable ``calib`` (a one-shot iterator is left alone: None). Drawing it moves
    no random stream (a shuffled DataLoader seeds its iterator from torch's global generator)."""
    import random

    import numpy as np

    if calib is None or isinstance(calib, (torch.Tensor, str, bytes)):
        return calib
    if not hasattr(calib, "__iter__") and not hasattr(calib, "__getitem__"):
        raise ConfigError(f"calib={type(calib).__name__} is not an iterable of (inputs, targets) batches; pass "
                          f"e.g. calib=[(x, y)] or a DataLoader")
    if hasattr(calib, "__next__"):
        return None  # a one-shot iterator: drawing from it would lose the batch
    states = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            return next(iter(calib))
    except StopIteration:
        raise ConfigError("calib is empty; pass at least one (inputs, targets) batch, e.g. calib=[(x, y)]") from None
    except TypeError as exc:
        raise ConfigError(f"calib={type(calib).__name__} cannot be iterated ({exc}); pass e.g. calib=[(x, y)] or a "
                          f"DataLoader") from None
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])


def _uses_loss(verb: str, a: dict) -> bool:
    """Whether the verb's criterion computes the loss of the calibration batches (so their targets matter)."""
    if a.get("loss_fn") is not None:
        return True
    criterion = a.get("criterion")
    if not isinstance(criterion, str):
        return False
    if verb == "sparsify_":
        return criterion.startswith("snip")

    spec = CRITERIA._items.get(criterion) if hasattr(CRITERIA, "_items") else None
    if spec is None:
        try:
            spec = CRITERIA.get(criterion)
        except PrunekitError:
            return False
    return any("grad" in n for n in spec.needs)


def check_calib(model: nn.Module, calib, example_inputs=None, *, loss_fn=None,
                allow_nonfinite: bool = False, targets: bool = True) -> list:
    """Run the first batch of ``calib`` through ``model`` (eval mode, no gradients, nothing changes):
    a batch that is not ``(inputs, targets)``, that the model cannot run, whose targets do not fit the loss,
    or whose activations are non-finite is a ConfigError naming ``calib``. Returns the data-dependent reads
    of that forward (see :func:`prunekit.graph.trace.note_python_read`)."""
    batch = _first_batch(calib)
    if batch is None:
        return []
    want = f"; example_inputs are {_shapes(example_inputs)}" if example_inputs is not None else ""
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise ConfigError(f"calib: batch 0 is {_shapes(batch)}, not an (inputs, targets) pair; pass "
                          f"calib=[(inputs, targets), ...] with inputs shaped like the model's input{want}")
    device = model_device(model)
    x, y = move_to(tuple(batch), device)
    bad: list = []
    reads: list = []
    hooks = []

    def hook(mod, args, out, name=None):
        if isinstance(out, torch.Tensor) and out.is_floating_point() and not bool(torch.isfinite(out).all()):
            if name not in bad:
                bad.append(name)

    if not allow_nonfinite:
        for name, mod in model.named_modules():
            hooks.append(mod.register_forward_hook(functools.partial(hook, name=name or "<model>")))
    training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad(), _ScalarReads(reads):
            try:
                out = call_model(model, x)
            except PrunekitError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure of the user's forward is a calib problem here
                raise ConfigError(f"calib: the model cannot run batch 0, whose inputs are {_shapes(x)}{want} "
                                  f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); give calib batches "
                                  f"(inputs, targets) whose inputs have the model's input shape") from None
            if targets:
                try:
                    (loss_fn or default_loss)(out, y)
                except Exception as e:  # noqa: BLE001
                    raise ConfigError(f"calib: the targets of batch 0 ({_shapes(y)}) do not fit the model's "
                                      f"output ({_shapes(out)}) in the loss ({type(e).__name__}: "
                                      f"{str(e).splitlines()[0][:200]}); give targets of one class index per "
                                      f"input (or pass loss_fn=...)") from None
    finally:
        for h in hooks:
            h.remove()
        for m, t in training.items():
            m.train(t)
    if bad:
        raise ConfigError(f"calib: batch 0 gives non-finite activations (NaN or Inf) first in "
                          f"{', '.join(repr(b) for b in bad[:5])}; check the inputs (normalisation, NaN pixels) "
                          f"and the weights, or pass allow_nonfinite=True")
    return reads


class _ScalarReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Collects the ops by which a forward turns a tensor value into a Python value."""

    def __init__(self, sink: list):
        super().__init__()
        self.sink = sink

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in _SCALAR_READS and len(self.sink) < 20:
            self.sink.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def _check_keywords(name: str, sig: inspect.Signature, kwargs: dict, extra: tuple) -> None:
    params = sig.parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    valid = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    valid += list(extra) + ["allow_nonfinite"]
    if takes_any and not extra:
        return
    bad = [k for k in kwargs if k not in valid]
    if bad:
        parts = []
        for k in bad:
            hint = closest(k, valid)
            parts.append(f"{k}={kwargs[k]!r} is not an argument of {name}()" +
                         (f"; did you mean {hint}=?" if hint else ""))
        raise ConfigError("; ".join(parts) + f". Valid keywords: {', '.join(sorted(set(valid)))}")


def _check_ignore(ignore):
    """``ignore`` as the verbs take it: a module FQN (or ``re:`` regex), a module, or a list of them."""
    if ignore is None:
        return ()
    if isinstance(ignore, (str, nn.Module)):
        return ignore
    if isinstance(ignore, (list, tuple, set, frozenset)) and all(isinstance(i, (str, nn.Module)) for i in ignore):
        return ignore
    raise ConfigError(f"ignore={ignore!r} must be a module FQN, a module, or a list of them (e.g. ignore=['fc'] "
                      f"or ignore=['re:.*head.*'])")


def checked(func=None, *, verb: str = "prune", extra_from=None):
    """Decorate a model-changing verb with the checks of this module (see the module docstring).

    ``extra_from``: a function whose keywords the verb also accepts through ``**kwargs`` (``prune_`` passes
    them to ``plan``). Nested checked calls (``prune_`` -> ``plan``) are checked once, by the outermost.
    """
    if func is None:
        return functools.partial(checked, verb=verb, extra_from=extra_from)
    sig = inspect.signature(func)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if _ACTIVE.get():
            kwargs.pop("allow_nonfinite", None)
            return func(*args, **kwargs)
        extra = tuple(inspect.signature(extra_from).parameters) if extra_from is not None else ()
        _check_keywords(func.__name__, sig, kwargs, extra)
        allow = kwargs.pop("allow_nonfinite", False)
        if "ignore" in kwargs:
            kwargs["ignore"] = _check_ignore(kwargs["ignore"])
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError as e:
            raise ConfigError(f"{func.__name__}(): {e}; see help(prunekit.{func.__name__}) for its arguments") \
                from None
        a = dict(bound.arguments)
        a.update(a.pop("plan_kwargs", None) or {})
        model = a.get("model")
        check_model(model, allow_nonfinite=allow, verb=verb)
        calib = a.get("calib")
        reads = check_calib(model, calib, a.get("example_inputs"), loss_fn=a.get("loss_fn"),
                            allow_nonfinite=allow, targets=_uses_loss(func.__name__, a)) if calib is not None else []

        sink: list = []
        token, tok2 = _ACTIVE.set(True), PYTHON_READS_SINK.set(sink)
        snapshot = copy.deepcopy(model) if reads and func.__name__ == "prune_" else None
        try:
            result = func(*args, **kwargs)
        finally:
            _ACTIVE.reset(token)
            PYTHON_READS_SINK.reset(tok2)
        given_plan = a.get("plan")
        rec = getattr(getattr(given_plan, "_graph", None), "rec", None)  # a plan made earlier: its trace's reads
        for entry in getattr(rec, "python_reads", []):
            if entry not in sink:
                sink.append(entry)
        if sink:
            note = (f"data-dependent control flow: {'; '.join(sink[:5])}; the plan covers the traced path only "
                    f"(inputs that take another branch may not run on the pruned model)")
            log.warning("%s: %s", func.__name__, note)
            if hasattr(result, "notes"):
                result.notes.append(note)
            if snapshot is not None:
                _check_pruned_on_calib(model, calib, snapshot)
                result.notes.append("the pruned model ran every calibration batch")
        return result

    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values()] + (
        [inspect.Parameter("allow_nonfinite", inspect.Parameter.KEYWORD_ONLY, default=False)]
        if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()) else []))
    return wrapper


def _check_pruned_on_calib(model: nn.Module, calib, snapshot: nn.Module) -> None:
    """Run the pruned ``model`` on every batch of ``calib``; on a failure put ``snapshot`` back in place."""
    training = {m: m.training for m in model.modules()}
    model.eval()
    failed = None
    try:
        with torch.no_grad():
            for i, batch in enumerate(calib):
                x = move_to(batch[0], model_device(model))
                try:
                    out = call_model(model, x)
                except Exception as e:  # noqa: BLE001
                    failed = (i, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
                    break
                if isinstance(out, torch.Tensor) and out.is_floating_point() and not bool(torch.isfinite(out).all()):
                    failed = (i, "non-finite outputs")
                    break
    finally:
        for m, t in training.items():
            m.train(t)
    if failed is not None:
        model.__dict__.clear()
        model.__dict__.update(snapshot.__dict__)
        raise PruneError(f"the pruned model fails on calib batch {failed[0]} ({failed[1]}): its forward has "
                         f"data-dependent control flow and the trace followed another branch; the model was "
                         f"restored. Trace with example_inputs that take that branch, or keep the branch's "
                         f"layers whole with ignore=[...]", op="calib check")
