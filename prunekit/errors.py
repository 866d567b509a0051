"""The exceptions prunekit raises.

Every error names the argument or the model path (FQN) at fault, shows the bad value and says how to fix
it. Errors raised while mutating a model are raised *after* the model has been restored.
"""
from __future__ import annotations

__all__ = ["PrunekitError", "ConfigError", "PruneError", "TraceError", "CheckpointError", "DataError", "MechanismWarning"]


class PrunekitError(Exception):
    """Base class of every prunekit error."""


class ConfigError(PrunekitError, ValueError):
    """A bad argument, recipe key or option value."""


class PruneError(PrunekitError, RuntimeError):
    """A pruning operation failed; the model (and optimizer) were restored to their state before it.

    ``fqn`` is the module or parameter path at fault and ``op`` the operation that failed, when known.
    """

    def __init__(self, message: str, *, fqn: str | None = None, op: str | None = None):
        self.fqn = fqn
        self.op = op
        where = []
        if fqn:
            where.append(f"fqn={fqn!r}")
        if op:
            where.append(f"op={op!r}")
        super().__init__(f"{message}" + (f" [{', '.join(where)}]" if where else ""))


class TraceNotConfirmed(PruneError):
    """The pruned model's forward did not issue the ops of the fast trace a plan was made on (the model was
    restored); a trace with real values decides."""


class BrokenForward(PruneError):
    """The pruned model's validation forward failed or changed its output shapes (the model was restored)."""


class TraceError(PruneError):
    """The model could not be traced with the given example inputs."""


class CheckpointError(PrunekitError, RuntimeError):
    """A checkpoint is missing, corrupted, or does not match the model."""


class DataError(PrunekitError, FileNotFoundError):
    """A data set could not be found or read."""


class MechanismWarning(UserWarning):
    """A method ran, but the mechanism that defines it did not act (telemetry says so); the message names
    the knob to turn. The result is then not that method's result."""
