"""The benchmark protocol: baseline → prune → BN recalibration → fine-tune → evaluate, over a grid.

A grid (``benchmarks/recipes/*.yaml``, :class:`BenchGrid`) lists methods × targets × seeds; prunekit's
methods and the peers (Torch-Pruning importances ``tp:<name>``, ``torch-prune:global-magnitude``) run
through the same steps, and :func:`run_grid` writes one JSON file per finished cell so that a rerun
continues where the last one stopped. See :mod:`prunekit.bench.protocol` for the exact protocol.
"""
from __future__ import annotations

from .grid import BenchGrid, cell_id
from .peers import TORCH_PRUNE_METHODS, TP_IMPORTANCES
from .protocol import bench_job, check_grid, load_grid, run_cell, run_grid

__all__ = ["bench_job", "BenchGrid", "cell_id", "check_grid", "load_grid", "run_cell", "run_grid", "TP_IMPORTANCES",
           "TORCH_PRUNE_METHODS"]
