"""The method harness: everything every method needs, written once.

``run_method(spec, ctx)`` resolves ``ctx.options`` into the method's typed config, parses the target once,
checks that the data the method needs is there and that the target is reachable (before the model is
touched), puts the model on ``ctx.device``, runs the method inside a transaction (any error or interrupt,
``KeyboardInterrupt`` included, leaves the model exactly as it was given) and checks the result: the
telemetry the method declared is present, and when its mechanism did not act the run ends with a
:class:`~prunekit.errors.MechanismWarning` that names the knob to turn.
"""
from __future__ import annotations

import copy
import logging
import warnings

from ..errors import ConfigError, MechanismWarning
from ..graph import keep_outputs_scope
from ..recipe import LATENCY_KINDS, LATENCY_METHODS, check_keep_outputs, parse_target
from ._config import config_to_dict
from ._registry import MethodResult, MethodSpec, RunContext
from ..api import plan

log = logging.getLogger(__name__)

__all__ = ["run_method", "model_transaction"]

_KINDS_FOR = {"structured": ("macs", "params"), "unstructured": ("sparsity",)}
_NEED_ARGS = {
    "calib": ("calib", "a few calibration batches (RunContext(calib=[(inputs, targets), ...]), "
                       "`prunekit run --calib-batches N`)"),
    "train": ("train_data", "training batches (RunContext(train_data=loader))"),
    "val": ("val_data", "held-out batches (RunContext(val_data=loader))"),
}


class model_transaction:
    """Context manager: on any exception (interrupts included) the model is put back exactly as on entry.

    The snapshot is a deep copy of the module tree, so structural changes, added hooks, masks and
    parametrisations are all undone; the caller's model object keeps its identity.
    """

    def __init__(self, model):
        self.model = model
        try:
            self.snapshot = copy.deepcopy(model)
        except Exception as e:  # noqa: BLE001 - a model that cannot be copied is refused, not run unprotected
            raise ConfigError(f"model={type(model).__name__}: it cannot be copied ({type(e).__name__}: {e}), so a "
                              f"failed run could not be undone; make its attributes deep-copyable") from None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            restore_module_(self.model, self.snapshot)
        return False


def restore_module_(model, snapshot) -> None:
    """Make ``model`` (same object) hold exactly the state of ``snapshot`` (its deep copy from earlier)."""
    object.__setattr__(model, "__class__", type(snapshot))  # parametrisations swap the class
    model.__dict__.clear()
    model.__dict__.update(snapshot.__dict__)


def check_context(spec: MethodSpec, ctx: RunContext, cfg=None) -> None:
    """Target, data needs and ignore names; one ``ConfigError`` lists every problem. Changes nothing.

    A ``latency=`` target is taken only by a method whose config has ``latency_table`` (a width search priced
    by a latency table measured on this machine), and only with that option set."""
    problems = []
    try:
        kind, value = parse_target(ctx.target, latency=True)
        allowed = _KINDS_FOR.get(spec.kind)
        if kind in LATENCY_KINDS:
            if not hasattr(cfg if cfg is not None else spec.config, "latency_table"):
                problems.append(f"target={ctx.target!r}: {spec.id} prices its widths by MACs or params, not by a "
                                f"latency table; give macs=F or params=F, or use a method that takes a latency "
                                f"target ({', '.join(LATENCY_METHODS)})")
            elif cfg is not None and cfg.latency_table is None:
                problems.append(f"target={ctx.target!r}: {spec.id} needs a latency table measured on this machine "
                                f"for it: pass options={{'latency_table': PATH}} (measured there on first use, "
                                f"reused after); or give macs=F or params=F")
            else:
                ctx.target_kind, ctx.target_value = kind, value
        elif allowed and kind not in allowed:
            what = ("a structured method (it removes channels): the target is the fraction of MACs or params "
                    "kept; write e.g. target='macs=0.5'" if spec.kind == "structured" else
                    "an unstructured method (it removes single weights): write target='sparsity=S' with S the "
                    "fraction removed, e.g. target='sparsity=0.9'")
            problems.append(f"target={ctx.target!r}: {spec.id} is {what}")
        elif spec.targets and kind not in spec.targets:
            example = {"macs": "macs=0.5", "params": "params=0.5", "sparsity": "sparsity=0.9"}[spec.targets[0]]
            problems.append(f"target={ctx.target!r}: {spec.id} takes only "
                            f"{' or '.join(f'{t}=F' for t in spec.targets)} targets ({spec.targets_why}); "
                            f"write e.g. target='{example}'")
        else:
            ctx.target_kind, ctx.target_value = kind, value
    except ConfigError as e:
        problems.append(f"method {spec.id!r}: {e}")
    try:
        check_keep_outputs(ctx.keep_outputs)
    except ConfigError as e:
        problems.append(f"method {spec.id!r}: {e}")
    for need in spec.needs:
        arg, how = _NEED_ARGS[need]
        value = getattr(ctx, arg)
        if value is None or (isinstance(value, (list, tuple)) and not value):
            problems.append(f"method {spec.id!r} needs {need} data but {arg}={value!r}; pass {how}")
    if ctx.model is None:
        problems.append(f"method {spec.id!r}: model=None; pass the model to prune")
    if problems:
        raise ConfigError("; ".join(problems))


def check_reachable(spec: MethodSpec, ctx: RunContext) -> None:
    """A structured target must be reachable by the engine (a data-free plan; nothing is changed)."""
    if spec.kind != "structured" or ctx.target_kind not in ("macs", "params"):
        return

    try:
        plan(ctx.model, ctx.example_inputs, target=ctx.target, criterion="l1", ignore=list(ctx.ignore),
             keep_outputs=ctx.keep_outputs)
    except ConfigError as e:
        raise ConfigError(f"method {spec.id!r}: {e}") from None


def run_method(spec: MethodSpec, ctx: RunContext) -> MethodResult:
    """Run ``spec`` on ``ctx``: resolve, check, move, transact, check telemetry. See the module docstring."""
    cfg = spec.resolve(ctx.options)
    check_context(spec, ctx, cfg)
    check_reachable(spec, ctx)
    with model_transaction(ctx.model), keep_outputs_scope(ctx.keep_outputs):
        if ctx.device is not None:
            ctx.model.to(ctx.device)
        result = spec.fn(ctx, cfg)
        if not isinstance(result, MethodResult):
            raise TypeError(f"method {spec.id!r} returned {type(result).__name__}; it must return a MethodResult")
    result.info.setdefault("config", config_to_dict(cfg))
    _check_telemetry(spec, result)
    return result


def _check_telemetry(spec: MethodSpec, result: MethodResult) -> None:
    tel = spec.telemetry
    if tel is None:
        return
    missing = [k for k in tel.keys if k not in result.telemetry]
    if missing:
        raise RuntimeError(f"method {spec.id!r} declared telemetry {list(tel.keys)} but reported no {missing}")
    result.engaged = bool(tel.engaged(result.telemetry))
    if not result.engaged:
        shown = ", ".join(f"{k}={result.telemetry[k]!r}" for k in tel.keys)
        msg = f"method {spec.id!r}: {tel.what} did not happen ({shown}); {tel.knob}"
        result.warnings.append(msg)
        warnings.warn(msg, MechanismWarning, stacklevel=3)
