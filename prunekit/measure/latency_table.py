"""Latency as a search target: a per-layer latency table measured on this machine, and the cost model over it.

A width search (:mod:`prunekit.allocate.search`) needs the cost of thousands of candidates; timing each
pruned model is far too slow, and MACs are a poor proxy for measured speed (depthwise convolutions,
BatchNorm and activations cost time but few MACs). :class:`LatencyTable` times every timed layer of the model
(convolutions, linear layers, BatchNorm) *alone*, as a fresh module of the same kind and shape fed an input
of the shape it sees in the model, at a grid of kept widths (both input and output channels: a convolution's
time depends on both; a depthwise convolution and a BatchNorm on their one width): warm-up forwards, then the
median of timed ones (:func:`prunekit.measure.latency`, eval mode, ``no_grad``, one thread by default). Layers of
one shape are timed once. The whole dense model is timed too: what the layers do not explain (activations,
additions, pooling, Python overhead) is the *residual*.

The table is cached as JSON, keyed by the model's fingerprint (module types, their settings and parameter
shapes), the backend, the input shape, the thread count, torch's version and the machine; loading a table of
another key is refused. It is saved after every layer shape, so an interrupted build resumes where it stopped.

:class:`LatencyModel` turns a search candidate (kept widths per segment of :class:`prunekit.api.Subnets`) into
predicted milliseconds: each timed layer's kept input/output widths (from the graph's channel groups, exact)
are looked up in its table, interpolated linearly between the measured widths on a monotone envelope
(a wider layer is never predicted faster), summed, and the residual added: a part that stays (per-call
overhead) and a part that follows the fraction of BatchNorm activations kept (elementwise work), split by
timing one pruned copy at half width once (kept in the table's file). The dense model is predicted exactly;
:meth:`LatencyModel.validate` reports the error against whole pruned models measured.

Targets: ``latency=0.5`` keeps at most half the dense model's latency (a fraction of the table's measured
dense latency), ``latency=3.5ms`` an absolute budget. Backend: eager PyTorch (``backend="torch"``, the one
``prunekit.measure`` times) or onnxruntime (``backend="onnxruntime"``: each layer, the dense model and the
calibration copy exported to ONNX and run by one CPU session with full graph optimisation; the ``export`` extra).
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..recipe import parse_target
from .timing import call_model, latency

log = logging.getLogger(__name__)

__all__ = ["LatencyTable", "LatencyModel", "parse_latency_target", "model_fingerprint", "time_forward", "GRID",
           "BACKENDS"]

GRID = (0.125, 0.25, 0.5, 0.75, 1.0)  # kept fractions of each dimension timed (ours)
BACKENDS = ("torch", "onnxruntime")
STATISTICS = ("median", "p10")
CLOCKS = ("wall", "cpu")
_TIMED = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)


def parse_latency_target(target) -> tuple[str, float] | None:
    """``"latency=0.5"`` -> ``("fraction", 0.5)``; ``"latency=3.5ms"`` -> ``("ms", 3.5)``; any other target
    (``macs=``, ``params=``, ...) -> None. A bad latency target is a ConfigError naming it (the grammar is the
    one of :func:`prunekit.recipe.parse_target`).

    Example:
        >>> parse_latency_target("latency=0.5"), parse_latency_target("latency=3ms"), parse_latency_target("macs=0.5")
        (('fraction', 0.5), ('ms', 3.0), None)
    """
    if not isinstance(target, str) or not target.strip().lower().startswith("latency"):
        return None
    kind, value = parse_target(target, latency=True)
    return ("ms" if kind == "latency_ms" else "fraction"), value


def model_fingerprint(model: nn.Module) -> str:
    """A hash of the model's structure: every module's path, type and settings and every parameter's shape
    (not the weights: a retrained model of one architecture times the same)."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, m in model.named_modules():
        h.update(f"{name}|{type(m).__name__}|{m.extra_repr()}".encode())
    for name, p in model.named_parameters():
        h.update(f"{name}|{tuple(p.shape)}".encode())
    return h.hexdigest()[:16]


def _single_input(example_inputs) -> torch.Tensor:
    x = example_inputs
    if isinstance(x, (tuple, list)) and len(x) == 1:
        x = x[0]
    if not isinstance(x, torch.Tensor):
        raise ConfigError("a latency table needs one input tensor (example_inputs); models with several or "
                          "keyword inputs are not supported yet")
    return x[:1]  # batch 1: the latency a user of one request sees


def _spec(m: nn.Module, x: torch.Tensor) -> dict | None:
    """The timed layer's kind and settings, dense widths excluded (``None``: not timed)."""
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        dw = m.groups > 1 and m.groups == m.in_channels == m.out_channels
        if m.groups > 1 and not dw:
            return None  # grouped (not depthwise): its time stays in the residual
        return {"kind": type(m).__name__.lower(), "k": list(m.kernel_size), "stride": list(m.stride),
                "padding": list(m.padding) if not isinstance(m.padding, str) else m.padding,
                "dilation": list(m.dilation), "dw": dw, "bias": m.bias is not None, "spatial": list(x.shape[2:]),
                "in": m.in_channels, "out": m.out_channels}
    if isinstance(m, nn.Linear):
        return {"kind": "linear", "lead": list(x.shape[:-1]), "bias": m.bias is not None, "in": m.in_features,
                "out": m.out_features}
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return {"kind": type(m).__name__.lower(), "shape": [x.shape[0], *x.shape[2:]], "in": m.num_features,
                "out": m.num_features}
    return None


def _one_d(spec: dict) -> bool:
    return spec["kind"].startswith("batchnorm") or spec.get("dw", False)


def _build(spec: dict, cin: int, cout: int) -> tuple[nn.Module, torch.Tensor]:
    """A fresh layer of ``spec``'s kind at ``cin`` -> ``cout`` channels, and an input for it."""
    k = spec["kind"]
    if k in ("conv1d", "conv2d"):
        cls = nn.Conv1d if k == "conv1d" else nn.Conv2d
        groups = cin if spec["dw"] else 1
        if spec["dw"]:
            cout = cin
        pad = spec["padding"] if isinstance(spec["padding"], str) else tuple(spec["padding"])
        mod = cls(cin, cout, tuple(spec["k"]), stride=tuple(spec["stride"]), padding=pad,
                  dilation=tuple(spec["dilation"]), groups=groups, bias=spec["bias"])
        return mod, torch.randn(1, cin, *spec["spatial"])
    if k == "linear":
        return nn.Linear(cin, cout, bias=spec["bias"]), torch.randn(*spec["lead"], cin)
    cls = nn.BatchNorm1d if k == "batchnorm1d" else nn.BatchNorm2d
    shape = spec["shape"]
    return cls(cin), torch.randn(shape[0], cin, *shape[1:])


def _grid_widths(full: int, grid: Sequence[float]) -> list[int]:
    return sorted({max(1, min(full, int(round(f * full)))) for f in grid} | {full})


class LatencyTable:
    """Measured milliseconds of every timed layer of one model at a grid of widths (module docstring).

    Build with :meth:`build` (measures what the file at ``path`` does not hold yet, saving as it goes) or
    :meth:`load` (an existing, complete table; refused for another model, backend, input shape or machine).

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        >>> t = LatencyTable.build(m, torch.randn(1, 3, 16, 16), warmup=0, runs=1, grid=(0.5, 1.0))
        >>> sorted(t.layers), t.layer_ms("0", 3, 8) > 0
        (['0', '1'], True)
    """

    def __init__(self, key: dict, layers: dict, entries: dict, dense_ms: float | None, grid: Sequence[float],
                 calibration: dict | None = None):
        self.key, self.layers, self.entries, self.dense_ms, self.grid = key, layers, entries, dense_ms, tuple(grid)
        self.calibration = calibration  # one pruned model measured whole: its residual and kept activations
        self.path: str | None = None  # where build/load found it (the calibration is saved there)
        self.timer: dict = {}
        self._env: dict = {}

    def timing(self) -> dict:
        """The timer settings this table was measured with (for timing whole models the same way)."""
        return self.timer or {"threads": self.key["threads"], "statistic": self.key["statistic"],
                              "clock": self.key.get("clock", "wall"), "backend": self.key.get("backend", "torch")}

    # ------------------------------------------------------------------------------------------ building
    @staticmethod
    def key_for(model: nn.Module, example_inputs, *, backend: str = "torch", threads: int = 1,
                statistic: str = "median", clock: str = "wall") -> dict:
        """What a cached table must match to be used for ``model``."""
        x = _single_input(example_inputs)
        return {"model": model_fingerprint(model), "backend": backend, "input_shape": list(x.shape),
                "threads": threads, "statistic": statistic, "clock": clock, "torch": torch.__version__.split("+")[0],
                "machine": f"{platform.machine()}|{platform.processor() or platform.system()}"}

    @classmethod
    def build(cls, model: nn.Module, example_inputs, path: str | os.PathLike | None = None, *,
              backend: str = "torch", grid: Sequence[float] = GRID, warmup: int = 3, runs: int = 15,
              threads: int = 1, statistic: str = "median", clock: str = "wall") -> "LatencyTable":
        """Time ``model``'s layers at ``grid`` kept fractions of their widths (and the dense model), continuing
        the table at ``path`` when it exists (refused when it belongs to another model or setting); the model
        is not changed. ``statistic``: ``"median"`` of the timed runs, or ``"p10"`` (their 10th percentile: on
        a machine shared with other processes, the figure least disturbed by them). ``clock``: ``"wall"``
        (elapsed time, the latency a user sees) or ``"cpu"`` (the thread's CPU time: on a machine whose cores
        are oversubscribed, wall time counts the slices other processes ran; one thread only)."""
        if statistic not in STATISTICS:
            raise ConfigError(f"statistic={statistic!r} is not valid; choose one of "
                              f"{', '.join(map(repr, STATISTICS))}")
        if clock not in CLOCKS:
            raise ConfigError(f"clock={clock!r} is not valid; choose one of {', '.join(map(repr, CLOCKS))}")
        if clock == "cpu" and threads != 1:
            raise ConfigError(f"clock='cpu' with threads={threads}: CPU time equals latency only on one thread; "
                              f"pass threads=1 or clock='wall'")
        if backend not in BACKENDS:
            raise ConfigError(f"backend={backend!r} is not a latency-table backend; choose one of "
                              f"{', '.join(map(repr, BACKENDS))}")
        grid = tuple(float(g) for g in grid)
        if not grid or not all(0 < g <= 1 for g in grid):
            raise ConfigError(f"grid={grid!r}: give kept fractions in (0, 1], e.g. (0.25, 0.5, 1.0)")
        key = cls.key_for(model, example_inputs, backend=backend, threads=threads, statistic=statistic,
                          clock=clock)
        if backend == "onnxruntime":
            _require_onnxruntime()
        timer = dict(warmup=warmup, runs=runs, threads=threads, statistic=statistic, clock=clock, backend=backend)
        if path is not None and Path(path).exists():
            table = cls._read(path, key)
        else:
            table = cls(key, {}, {}, None, grid)
        x = _single_input(example_inputs)
        if not table.layers:
            table.layers = _layer_specs(model, x)
            if not table.layers:
                raise ConfigError("the model has no layer a latency table times (Conv1d/Conv2d/Linear/BatchNorm)")
        for fqn, spec in table.layers.items():
            sig = _signature(spec)
            if sig not in table.entries:
                a = _grid_widths(spec["in"], table.grid)
                b = [spec["out"]] if _one_d(spec) else _grid_widths(spec["out"], table.grid)
                table.entries[sig] = {"in": a, "out": b, "ms": [[None] * len(b) for _ in a]}
        todo = [sig for sig, e in table.entries.items() if any(v is None for row in e["ms"] for v in row)]
        overhead: dict = {}  # onnxruntime: a session's per-call cost, by input shape
        for n, sig in enumerate(todo):
            spec, e = json.loads(sig), table.entries[sig]
            for i, cin in enumerate(e["in"]):
                for j, cout in enumerate(e["out"]):
                    if e["ms"][i][j] is None:
                        mod, xi = _build(spec, cin, cout)
                        ms = time_forward(mod, xi, **timer)
                        if backend == "onnxruntime":  # one session per layer pays the call once per layer;
                            # the whole model's session pays it once (and fuses BatchNorm into the conv)
                            shape = tuple(xi.shape)
                            if shape not in overhead:
                                overhead[shape] = time_forward(_PassThrough(), xi, **timer)
                            ms = max(0.0, ms - overhead[shape])
                        e["ms"][i][j] = ms
            log.info("latency table: layer shape %d/%d timed", n + 1, len(todo))
            if path is not None:
                table.save(path)
        if table.dense_ms is None:
            table.dense_ms = _whole(model, x, timer)
            if path is not None:
                table.save(path)
        table._env = {}
        table.path, table.timer = (str(path) if path is not None else None), timer
        return table

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module, example_inputs, *, backend: str = "torch",
             threads: int = 1, statistic: str = "median", clock: str = "wall") -> "LatencyTable":
        """A complete table from ``path`` for ``model``; refused (ConfigError) when missing, incomplete or
        measured for another model, backend, input shape, thread count, torch version or machine."""
        if not Path(path).exists():
            raise ConfigError(f"latency_table={str(path)!r} does not exist: a latency target needs a table measured "
                              f"on this machine; build it with LatencyTable.build(model, example_inputs, path)")
        table = cls._read(path, cls.key_for(model, example_inputs, backend=backend, threads=threads,
                                            statistic=statistic, clock=clock))
        if table.dense_ms is None or any(v is None for e in table.entries.values() for r in e["ms"] for v in r):
            raise ConfigError(f"latency_table={str(path)!r} is incomplete (an interrupted build); run "
                              f"LatencyTable.build with the same path to finish it")
        table.path = str(path)
        return table

    @staticmethod
    def setting_of(path: str | os.PathLike) -> dict:
        """The key a table file was measured with (backend, clock, statistic, ...; ``{}`` when there is no
        readable table at ``path``): what a later build at that path continues with unless told otherwise."""
        try:
            key = json.loads(Path(path).read_text()).get("key", {})
        except (OSError, ValueError, AttributeError):
            return {}
        return key if isinstance(key, dict) else {}

    @staticmethod
    def backend_of(path: str | os.PathLike) -> str | None:
        """The backend a table file was measured with (None when there is no readable file at ``path``)."""
        return LatencyTable.setting_of(path).get("backend")

    @classmethod
    def _read(cls, path, key: dict) -> "LatencyTable":
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"latency_table={str(path)!r} is not a readable latency table ({e})") from None
        if d.get("type") != "prunekit.LatencyTable":
            raise ConfigError(f"latency_table={str(path)!r} is not a prunekit latency table")
        if d["key"] != key:
            saved = d["key"]
            diff = [k for k in key if saved.get(k) != key[k]]
            was = ", ".join(f"{k}={saved.get(k)!r}" for k in diff)
            now = ", ".join(f"{k}={key[k]!r}" for k in diff)
            raise ConfigError(f"latency_table={str(path)!r} was measured for another {', '.join(diff)} ({was}; "
                              f"this run: {now}); pass another path to measure a new table for this model and "
                              f"setting")
        return cls(d["key"], d["layers"], d["entries"], d.get("dense_ms"), d["grid"], d.get("calibration"))

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (temporary file renamed over ``path``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"type": "prunekit.LatencyTable", "version": 1, "key": self.key, "grid": list(self.grid),
                           "dense_ms": self.dense_ms, "calibration": self.calibration, "layers": self.layers,
                           "entries": self.entries}, f)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # ------------------------------------------------------------------------------------------ lookups
    def _envelope(self, sig: str):
        """Axes and the monotone envelope of the measured times (running max along each axis)."""
        if sig not in self._env:
            e = self.entries[sig]
            ms = np.maximum.accumulate(np.maximum.accumulate(np.asarray(e["ms"], float), axis=0), axis=1)
            self._env[sig] = (np.asarray(e["in"], float), np.asarray(e["out"], float), ms)
        return self._env[sig]

    def layer_ms(self, fqn: str, cin: int, cout: int) -> float:
        """Predicted milliseconds of layer ``fqn`` at ``cin`` input and ``cout`` output channels (for a depthwise
        convolution or BatchNorm only ``cin`` counts), linear between measured widths, clamped at the ends."""
        spec = self.layers[fqn]
        a, b, ms = self._envelope(_signature(spec))
        col = np.array([np.interp(cin, a, ms[:, j]) for j in range(ms.shape[1])])
        return float(col[0] if len(b) == 1 else np.interp(cout, b, col))

    def layers_ms(self) -> float:
        """Sum of every timed layer at its dense widths."""
        return sum(self.layer_ms(f, s["in"], s["out"]) for f, s in self.layers.items())


def _signature(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True)


def _layer_specs(model: nn.Module, x: torch.Tensor) -> dict:
    """``{module path: spec}`` of every timed layer, read with hooks on one forward (first call of each)."""
    specs: dict = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, _TIMED):
            def hook(mod, args, _name=name):
                if _name not in specs and args and isinstance(args[0], torch.Tensor):
                    s = _spec(mod, args[0].detach())
                    if s is not None:
                        specs[_name] = s
            hooks.append(m.register_forward_pre_hook(hook))
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            call_model(model, x)
    finally:
        for h in hooks:
            h.remove()
        for m, f in flags:
            m.training = f
    return specs


class LatencyModel:
    """Predicted latency of the candidates of a :class:`prunekit.api.Subnets` from a :class:`LatencyTable`.

    ``predict_ms(widths)``: milliseconds = the table's layers at their kept widths + a residual
    ``c0 + c1 * a`` (``a``: the fraction of BatchNorm activations kept). With ``calibrate=True`` (default) the
    residual is fitted on two whole models, the dense one and one pruned copy at half of every segment
    (timed once, kept in the table's file): ``c0`` is the per-call overhead that stays, ``c1`` the elementwise
    work that follows the channels (``c1 >= 0``, so the prediction is monotone in every width). Without
    calibration the residual follows the activations when it is positive and stays constant otherwise.
    ``cost(widths)``: the prediction as a fraction of the dense model's (the search block's cost of a
    ``latency=`` target); ``limit_for(target)``: a target's kept fraction."""

    def __init__(self, subnets, table: LatencyTable, *, calibrate: bool = True):
        self.subnets, self.table = subnets, table
        g = subnets.graph
        terms = dict(g.param_terms)
        model = dict(subnets.model.named_modules())
        self._layers = []  # (fqn, spec, the weight's per-dim terms)
        for fqn, spec in table.layers.items():
            w = f"{fqn}.weight" if fqn else "weight"
            fs = terms.get(w)
            if fs is None or fqn not in model:
                raise ConfigError(f"the latency table's layer {fqn!r} is not in this model; measure a table for it")
            self._layers.append((fqn, spec, fs))
        self._bn_dense = sum(s["in"] * _numel(s["shape"][1:]) for _, s, _ in self._layers
                             if s["kind"].startswith("batchnorm"))
        residual = table.dense_ms - table.layers_ms()
        self.c0, self.c1 = (0.0, residual) if residual > 0 and self._bn_dense else (residual, 0.0)
        if calibrate and self._bn_dense:
            self._calibrate()
        self._dense_ms = self.predict_ms(subnets.space.full())

    def _calibrate(self) -> None:
        t, space = self.table, self.subnets.space
        if t.calibration is None:
            half = space.uniform(0.5)
            ms = _whole(self.subnets.pruned_copy(half), _single_input(self.subnets.example_inputs), t.timing())
            layers, act = self._layers_and_act(half)
            t.calibration = {"widths": list(half), "measured_ms": ms, "residual": ms - layers, "act": act}
            if t.path is not None:
                t.save(t.path)
        c = t.calibration
        r_dense = t.dense_ms - t.layers_ms()
        if c["act"] < 1.0 - 1e-9:
            self.c1 = max(0.0, (r_dense - c["residual"]) / (1.0 - c["act"]))
            self.c0 = r_dense - self.c1

    def _layers_and_act(self, widths) -> tuple[float, float]:
        total, act = 0.0, 0
        for fqn, (cin, cout) in self.layer_widths(widths).items():
            total += self.table.layer_ms(fqn, cin, cout)
            spec = self.table.layers[fqn]
            if spec["kind"].startswith("batchnorm"):
                act += cin * _numel(spec["shape"][1:])
        return total, (act / self._bn_dense if self._bn_dense else 1.0)

    @property
    def residual_ms(self) -> float:
        return self.c0 + self.c1

    @staticmethod
    def _kept(f, removed) -> int:
        if isinstance(f, (int, np.integer)):
            return int(f)
        size, idx = f
        return size - int(removed[idx].sum())

    def layer_widths(self, widths) -> dict:
        """``{layer: (kept input channels, kept output channels)}`` for a candidate."""
        removed = self.subnets.graph.removed_flat(self.subnets.removal(widths))
        out = {}
        for fqn, spec, fs in self._layers:
            if spec["kind"].startswith("batchnorm") or spec.get("dw"):
                c = self._kept(fs[0], removed)
                out[fqn] = (c, c)
            elif spec["kind"] == "linear":
                out[fqn] = (self._kept(fs[1], removed), self._kept(fs[0], removed))
            else:
                out[fqn] = (self._kept(fs[1], removed), self._kept(fs[0], removed))
        return out

    def predict_ms(self, widths) -> float:
        """Predicted milliseconds of the model cut to ``widths``."""
        layers, act = self._layers_and_act(widths)
        # the residual's line can fall below zero far from its calibration point when the layers timed alone
        # sum to more than the whole model (onnxruntime fuses layers); a latency is never negative
        return max(0.0, layers + self.c0 + self.c1 * act)

    def cost(self, widths) -> float:
        """Predicted latency kept: ``predict_ms(widths) / predict_ms(dense)``."""
        return self.predict_ms(widths) / self._dense_ms

    @property
    def dense_ms(self) -> float:
        return self._dense_ms

    def limit_for(self, target: str) -> float:
        """The kept fraction a ``latency=F`` / ``latency=Xms`` target asks for."""
        parsed = parse_latency_target(target)
        if parsed is None:
            raise ConfigError(f"target={target!r} is not a latency target; write latency=0.5 or latency=3ms")
        unit, v = parsed
        limit = v if unit == "fraction" else v / self._dense_ms
        if unit == "ms" and limit >= 1.0:
            log.info("latency=%sms is at or above the dense model's %.3f ms: nothing needs to be cut", v,
                     self._dense_ms)
        return min(limit, 1.0)

    def measured_ms(self, widths, *, rounds: int = 3) -> tuple[float, float]:
        """``(dense ms, ms of the model cut to widths)``, both timed now with the table's timer, alternately
        (``rounds`` each, the median of each)."""
        timer = self.table.timing()
        x = _single_input(self.subnets.example_inputs)
        pruned, dense = self.subnets.pruned_copy(self.subnets.space.clip(widths)), copy.deepcopy(self.subnets.model)
        d, p = [], []
        for _ in range(rounds):
            d.append(time_forward(dense, x, **timer))
            p.append(time_forward(pruned, x, **timer))
        return float(np.median(d)), float(np.median(p))

    def measured_fraction(self, widths, *, rounds: int = 3) -> float:
        """The measured latency of the model cut to ``widths`` as a fraction of the dense model's
        (:meth:`measured_ms`): the figure a latency target is checked against."""
        dense_ms, ms = self.measured_ms(widths, rounds=rounds)
        return ms / dense_ms

    def validate(self, candidates: Iterable, *, warmup: int = 3, runs: int = 15, threads: int | None = None) -> list:
        """Predicted vs measured milliseconds of each candidate's physically pruned copy (the model is not
        changed): ``[{"widths", "predicted_ms", "measured_ms", "error"}]`` with ``error`` = predicted /
        measured - 1."""
        threads = self.table.key["threads"] if threads is None else threads
        x = _single_input(self.subnets.example_inputs)
        out = []
        for widths in candidates:
            widths = self.subnets.space.clip(widths)
            pruned = self.subnets.pruned_copy(widths) if widths != self.subnets.space.full() else \
                copy.deepcopy(self.subnets.model)
            measured = time_forward(pruned, x, warmup=warmup, runs=runs, threads=threads,
                                    statistic=self.table.key["statistic"], clock=self.table.key.get("clock", "wall"),
                                    backend=self.table.key.get("backend", "torch"))
            pred = self.predict_ms(widths)
            out.append({"widths": list(widths), "predicted_ms": pred, "measured_ms": measured,
                        "error": pred / measured - 1.0})
        return out


def _whole(model: nn.Module, x, timer: dict, rounds: int = 3) -> float:
    """A whole model's time: the median over ``rounds`` rounds of :func:`time_forward` (a whole forward is long
    enough for the machine's other work to land in one round)."""
    return float(np.median([time_forward(model, x, **timer) for _ in range(rounds)]))


def time_forward(model: nn.Module, x, *, warmup: int = 3, runs: int = 15, threads: int = 1,
                 statistic: str = "median", clock: str = "wall", backend: str = "torch") -> float:
    """Milliseconds of one forward: :func:`prunekit.measure.latency` for the wall clock; for ``clock="cpu"``
    the same protocol (eval mode, ``no_grad``, warm-up, ``runs`` timed) read on the thread's CPU clock.
    ``backend="onnxruntime"``: the model exported to ONNX and run by an onnxruntime CPU session (``threads``
    intra-op threads, full graph optimisation), the same warm-up, runs and clocks."""
    if backend == "onnxruntime":
        return _ort_forward_ms(model, x, warmup=warmup, runs=runs, threads=threads, statistic=statistic,
                               clock=clock)
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r} is not a latency backend; choose one of "
                          f"{', '.join(map(repr, BACKENDS))}")
    if clock == "wall":
        s = latency(model, x, warmup=warmup, runs=runs, threads=threads)
        return s.median_ms if statistic == "median" else s.p10
    flags = [(m, m.training) for m in model.modules()]
    old = torch.get_num_threads()
    times = []
    try:
        torch.set_num_threads(1)
        model.eval()
        with torch.no_grad():
            for _ in range(warmup):
                call_model(model, x)
            for _ in range(runs):
                t0 = time.thread_time()
                call_model(model, x)
                times.append((time.thread_time() - t0) * 1e3)
    finally:
        torch.set_num_threads(old)
        for m, f in flags:
            m.training = f
    return float(np.median(times) if statistic == "median" else np.percentile(times, 10))


class _PassThrough(nn.Module):
    """The cheapest graph onnxruntime runs on an input: what one session call costs beyond the layer's work."""

    def forward(self, x):
        return x + 0


def _require_onnxruntime():
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import onnxruntime
    except ImportError:
        raise ConfigError("backend='onnxruntime' needs onnx and onnxruntime: pip install 'prunekit[export]'; or "
                          "use backend='torch'") from None
    return onnxruntime


def _ort_forward_ms(model: nn.Module, x, *, warmup: int, runs: int, threads: int, statistic: str,
                    clock: str) -> float:
    ort = _require_onnxruntime()
    x = _single_input(x)
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "m.onnx")
            with torch.no_grad():
                torch.onnx.export(model, (x,), path, input_names=["x"], dynamo=False)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.log_severity_level = 3
            session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    finally:
        for m, f in flags:
            m.training = f
    feed = {"x": x.detach().cpu().numpy()}
    clock_fn = time.thread_time if clock == "cpu" else time.perf_counter
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = clock_fn()
        session.run(None, feed)
        times.append((clock_fn() - t0) * 1e3)
    return float(np.median(times) if statistic == "median" else np.percentile(times, 10))


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
