"""Where independent jobs run: here, or on a Ray cluster (an optional extra: ``pip install 'prunekit[ray]'``).

A job is a top-level function and its arguments (both picklable); :meth:`RayExecutor.run` submits every job and
yields ``(index, result, error)`` as each ends, in the order they finish, so the caller can write each result as
it comes (a benchmark grid stays resumable) and tell a job that raised from one that returned.
:class:`LocalExecutor` runs the same jobs one after the other in this process, so a caller has one code path
and the local run is the reference the distributed one must reproduce: each job seeds itself, so the results
do not depend on where it ran.

``RayExecutor(address=None)`` starts a private local Ray instance (``num_cpus`` CPUs) and stops it on exit;
``address="host:port"`` (or ``"auto"``, or ``"ray://host:port"``) joins a running cluster, checked first with a
plain TCP connection so that an unreachable address is a ``ConfigError`` naming it within seconds instead of
Ray's long retry. Environment variables named ``PRUNEKIT_*`` (e.g. the baseline store) travel to the workers.
"""
from __future__ import annotations

import logging
import os
import socket
from typing import Any, Callable, Iterator, Sequence

from ..errors import ConfigError

__all__ = ["EXECUTORS", "LocalExecutor", "RayExecutor", "make_executor", "check_address"]

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
_CONNECT_TIMEOUT_S = 5.0


def check_address(address: str) -> None:
    """Refuse (ConfigError) a Ray ``address`` nobody answers at; ``"auto"`` is left to Ray."""
    if not isinstance(address, str) or not address.strip():
        raise ConfigError(f"address={address!r} is not a Ray address; give host:port of the head node "
                          f"(e.g. 10.0.0.5:6379), 'auto', or leave it out to start a local instance")
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"address={address!r} is not host:port; give e.g. 10.0.0.5:6379 (the head node's GCS "
                          f"port) or ray://10.0.0.5:10001 (Ray Client)")
    try:
        socket.create_connection((host, int(port)), timeout=_CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise ConfigError(f"address={address!r}: no Ray head answers there ({e.strerror or e}); start one with "
                          f"`ray start --head --port {port}` on that machine, or leave the address out to run "
                          f"on a local Ray instance") from None


class LocalExecutor:
    """The jobs one after the other in this process (the reference a distributed run reproduces)."""

    kind = "local"

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def run(self, fn: Callable, jobs: Sequence[tuple]) -> Iterator[tuple[int, Any, BaseException | None]]:
        for i, args in enumerate(jobs):
            try:
                result = fn(*args)
            except Exception as e:  # noqa: BLE001 - handed to the caller, who records or re-raises it
                yield i, None, e
                continue
            yield i, result, None


class RayExecutor:
    """The jobs as Ray tasks (one CPU each) on a local instance or a running cluster."""

    kind = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None):
        if address is not None:
            check_address(address)
        if num_cpus is not None and (not isinstance(num_cpus, int) or isinstance(num_cpus, bool) or num_cpus < 1):
            raise ConfigError(f"num_cpus={num_cpus!r} must be a positive int (the local Ray instance's CPUs)")
        self.address, self.num_cpus = address, num_cpus
        self._ray = None
        self._started = False

    def __enter__(self) -> "RayExecutor":
        try:
            import ray
        except ImportError:
            raise ConfigError("executor='ray' needs Ray: pip install 'prunekit[ray]'; or use the local "
                              "executor") from None
        env = {k: v for k, v in os.environ.items() if k.startswith("PRUNEKIT_")}
        if not ray.is_initialized():
            kw: dict = {"runtime_env": {"env_vars": env}, "log_to_driver": False, "logging_level": logging.WARNING}
            if self.address is None:
                kw.update(num_cpus=self.num_cpus, include_dashboard=False)
            try:
                ray.init(address=self.address, **kw)
            except ConnectionError as e:
                raise ConfigError(f"address={self.address!r}: Ray could not join the cluster there ({e})") from None
            self._started = True
        self._ray = ray
        log.info("ray: %s CPUs available", ray.available_resources().get("CPU"))
        return self

    def __exit__(self, *exc) -> None:
        if self._started and self._ray is not None:
            self._ray.shutdown()
        self._ray, self._started = None, False

    def run(self, fn: Callable, jobs: Sequence[tuple]) -> Iterator[tuple[int, Any, BaseException | None]]:
        if self._ray is None:
            raise RuntimeError("RayExecutor.run outside its `with` block")
        ray = self._ray
        remote = ray.remote(num_cpus=1)(fn)
        index = {remote.remote(*args): i for i, args in enumerate(jobs)}
        pending = list(index)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ref = done[0]
            try:
                result = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - the task's exception (RayTaskError wraps it)
                cause = getattr(e, "cause", None)
                yield index[ref], None, cause if isinstance(cause, BaseException) else e
                continue
            yield index[ref], result, None


def make_executor(executor: str = "local", *, address: str | None = None, num_cpus: int | None = None):
    """``"local"`` or ``"ray"`` (``address``: a running cluster; None: a local instance of ``num_cpus``)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"executor={executor!r} is not valid; choose one of {', '.join(map(repr, EXECUTORS))}")
    if executor == "local":
        if address is not None:
            raise ConfigError(f"address={address!r} is for executor='ray'; add --executor ray or drop the address")
        return LocalExecutor()
    return RayExecutor(address, num_cpus=num_cpus)
