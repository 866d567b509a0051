"""Wall-clock latency of a forward pass: warm-up, then the median and spread over timed runs."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import ConfigError

from ..graph.trace import call_model  # one definition of how example inputs are passed

__all__ = ["latency", "LatencyStats", "call_model"]


@dataclass(frozen=True)
class LatencyStats:
    median_ms: float  # milliseconds per forward
    p10: float  # 10th percentile, ms
    p90: float  # 90th percentile, ms
    runs: int  # timed forwards
    threads: int = 1  # torch intra-op threads used

    def to_dict(self) -> dict:
        return {"median_ms": self.median_ms, "p10": self.p10, "p90": self.p90, "runs": self.runs,
                "threads": self.threads}


def _percentile(sorted_ms: list[float], q: float) -> float:
    pos = (len(sorted_ms) - 1) * q  # linear interpolation, as numpy.percentile's default
    lo = int(pos)
    hi = min(lo + 1, len(sorted_ms) - 1)
    return sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * (pos - lo)


def _sync(example_inputs) -> None:
    leaves = example_inputs.values() if isinstance(example_inputs, dict) else (
        example_inputs if isinstance(example_inputs, (tuple, list)) else [example_inputs])
    if any(isinstance(t, torch.Tensor) and t.is_cuda for t in leaves):
        torch.cuda.synchronize()


def latency(model: nn.Module, example_inputs, *, warmup: int = 5, runs: int = 30, threads: int = 1) -> LatencyStats:
    """Time ``runs`` forwards in eval mode under ``no_grad`` with ``threads`` intra-op threads.

    The model's train/eval flags and torch's thread count are restored afterwards, also on error.

    Example:
        >>> s = latency(nn.Linear(8, 8), torch.zeros(1, 8), warmup=1, runs=5)
        >>> s.runs, s.p10 <= s.median_ms <= s.p90
        (5, True)
    """
    for arg, value, minimum in (("warmup", warmup, 0), ("runs", runs, 1), ("threads", threads, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ConfigError(f"{arg}={value!r} must be an int >= {minimum}")
    flags = [(m, m.training) for m in model.modules()]
    old_threads = torch.get_num_threads()
    times: list[float] = []
    try:
        torch.set_num_threads(threads)
        model.eval()
        with torch.no_grad():
            for _ in range(warmup):
                call_model(model, example_inputs)
            _sync(example_inputs)
            for _ in range(runs):
                t0 = time.perf_counter()
                call_model(model, example_inputs)
                _sync(example_inputs)
                times.append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(old_threads)
        for m, flag in flags:
            m.training = flag
    times.sort()
    return LatencyStats(median_ms=_percentile(times, 0.5), p10=_percentile(times, 0.1), p90=_percentile(times, 0.9),
                        runs=runs, threads=threads)
