"""The benchmark protocol and the resumable grid runner.

Protocol of one cell (method, target, seed), identical for prunekit methods and peer tools:

1. start from a fresh copy of the trained baseline; seed everything with the cell's seed;
2. prune to the target (MACs/params fraction kept, or weight sparsity); evaluate → ``acc_pruned``;
3. re-estimate BatchNorm statistics on ``calib_batches`` training batches (structured targets) → ``acc_recal``;
4. fine-tune ``finetune_epochs`` epochs on the training subset (SGD, momentum 0.9, cosine lr) → ``acc_finetuned``;
5. count params and MACs (``prunekit.measure``, one counter for every tool) and time batch-1 latency.

Every accuracy is on the complete test split. Each finished cell is written atomically to
``<out>.cells/<cell>.json`` together with the grid's protocol fingerprint; a rerun skips the cells whose
file exists with the same fingerprint, so a grid cut off half-way continues where it stopped.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import time
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..recipe import parse_target
from . import peers
from .grid import BenchGrid, cell_id, split_variant

log = logging.getLogger(__name__)


def _nonzero(model: nn.Module) -> int:
    return int(sum(int((p != 0).sum()) for p in model.parameters()))


def check_grid(grid: BenchGrid) -> None:
    """Validate every method × target pair before anything runs (all problems reported at once)."""
    from .. import workflows as W

    problems = []
    W._check_data_name(grid.data)
    W._check_model_name(grid.model)
    for method in grid.methods:
        base, inline = split_variant(method)
        for target in grid.targets:
            try:
                if peers.is_peer(method) or (inline and peers.is_peer(base)):
                    if inline:
                        raise ConfigError("peer tools take no variant options")
                    peers.check_peer(method, target)
                else:
                    spec = W._check_method(base, parse_target(target)[0])
                    if spec is not None:
                        spec.options(grid.cell_recipe(method, target, grid.seeds[0]).options)
            except ConfigError as exc:
                problems.append(f"[{method} @ {target}] {exc}")
    if problems:
        raise ConfigError("bench grid cannot run:\n  " + "\n  ".join(problems))


class _Context:
    """Baseline model and data bundles shared by the cells of one grid run (loaded lazily, once)."""

    def __init__(self, grid: BenchGrid):
        self.grid = grid
        self._bundles: dict[int, object] = {}
        self._baseline = None

    def bundle(self, seed: int):
        if seed not in self._bundles:
            from .. import data

            g = self.grid
            self._bundles[seed] = data.load(g.data, batch_size=g.batch_size, subset=g.subset, data_dir=g.data_dir,
                                            seed=seed, **g.data_options)
        return self._bundles[seed]

    def baseline(self) -> nn.Module:
        if self._baseline is None:
            from .. import models
            from .. import workflows as W

            g = self.grid
            b = self.bundle(g.seeds[0])
            if g.baseline is None:
                torch.manual_seed(0)
                self._baseline = models.create(g.model, num_classes=b.num_classes, in_channels=b.in_channels,
                                               input_size=b.input_size)
            else:
                self._baseline = W._load_baseline(g.baseline)[0]
            self._baseline.eval()
        return self._baseline


def baseline_numbers(ctx: _Context, cache: Path) -> dict:
    """Accuracy, params, MACs and latency of the unpruned baseline (cached next to the cells)."""
    from .. import workflows as W

    fp = ctx.grid.fingerprint()
    if cache.is_file():
        data = json.loads(cache.read_text())
        if data.get("fingerprint") == fp:
            return data
    model = copy.deepcopy(ctx.baseline())
    b = ctx.bundle(ctx.grid.seeds[0])
    x = W._example_inputs(b).to(ctx.grid.device)
    model.to(ctx.grid.device)
    nums = {"fingerprint": fp, "acc_base": W._evaluate(model, b.test, ctx.grid.device)["accuracy"],
            **{f"{k}_base": v for k, v in W._measure(model, x, False).items()}}
    if ctx.grid.latency:
        nums["latency_base_ms"] = W._measure(model, x, True)["latency_ms"]
    from ..report import write_json

    write_json(nums, cache)
    return nums


def run_cell(ctx: _Context, method: str, target: str, seed: int, base: dict, progress: bool = False) -> dict:
    """Run one cell of the protocol and return its numbers (nothing is written here)."""
    from .. import workflows as W
    from ..train import fit

    g = ctx.grid
    t0 = time.perf_counter()
    bundle = ctx.bundle(seed)
    model = copy.deepcopy(ctx.baseline()).to(g.device).eval()
    x = W._example_inputs(bundle).to(g.device)
    kind, _ = parse_target(target)
    torch.manual_seed(seed)
    recipe = g.cell_recipe(method, target, seed)
    callbacks, info, masked = [], {}, None
    if method.startswith(peers.TP_PREFIX):
        info = peers.tp_prune_(model, x, method, target, calib=W.calib_batches(bundle, g.calib_batches),
                               num_classes=bundle.num_classes, ignore=tuple(g.ignore), seed=seed)
    elif method.startswith(peers.TORCH_PRUNE_PREFIX):
        masked = peers.torch_prune_(model, method, target)
    else:
        spec = W._check_method(recipe.method, kind)  # the id of a variant id[option=value]
        callbacks, info = W._apply_pruning(model, x, recipe, spec, bundle, progress)
        model = info.pop("model", model)
    t_prune = time.perf_counter() - t0
    cell = {"method": method, "target": target, "seed": seed,
            "source": peers.peer_source(method) if peers.is_peer(method) else "prunekit"}
    cell["acc_pruned"] = W._evaluate(model, bundle.test, g.device)["accuracy"]
    cell["acc_recal"] = None
    if g.calib_batches > 0 and kind != "sparsity":
        W.recalibrate_bn(model, W.calib_batches(bundle, g.calib_batches), g.device)
        cell["acc_recal"] = W._evaluate(model, bundle.test, g.device)["accuracy"]
    if g.finetune_epochs > 0:
        fit(model, bundle.train, W._train_config(recipe, g.finetune_epochs, progress), callbacks=callbacks)
    if masked is not None:
        peers.torch_prune_finalize(masked)
    W._finalize_masks(model)
    model.eval()
    cell["acc_finetuned"] = W._evaluate(model, bundle.test, g.device)["accuracy"]
    cell.update(W._measure(model, x, False))
    cell["nonzero_params"] = _nonzero(model)
    cell.update({k: v for k, v in base.items() if k not in ("fingerprint", "latency_base_ms")})
    if g.latency:  # baseline and pruned model timed back to back, so both see the same machine load
        cell.update(W.paired_latency(ctx.baseline(), model, x))
    cell["telemetry"] = {k: v for k, v in info.pop("telemetry", {}).items()
                         if isinstance(v, (int, float, str, bool, type(None)))}
    cell["engaged"] = info.pop("engaged", None)
    cell["warnings"] = list(info.pop("warnings", []))
    cell["info"] = {k: v for k, v in info.items() if isinstance(v, (int, float, str, bool, type(None)))}
    cell["time_prune_s"] = t_prune
    cell["machine"] = _machine(g.device)
    cell["time_s"] = time.perf_counter() - t0
    return cell


def run_grid(grid: BenchGrid, *, out: str | None = None, resume: bool = True, progress: bool = True,
             limit: int | None = None, command: str | None = None, reverse: bool = False, workers: int = 1,
             keep_going: bool | None = None, threads: int = 1) -> dict:
    """Run every unfinished cell of ``grid`` (at most ``limit`` new ones), then write the aggregated report.

    A cell is skipped when its file exists (written by this or any other run of the same protocol), so a
    second process started with ``reverse=True`` works through the grid from the other end and the two
    meet in the middle. The report covers every finished cell of the grid, whoever ran it.

    ``workers > 1`` starts that many worker processes (``threads`` torch threads each) that share the grid
    by claiming cells (an exclusive ``<cell>.claim`` file, removed when the cell ends; a claim left by a
    process that died is taken over), in seed-major order so that a grid cut off early has every row at its
    first seeds. ``keep_going`` (the default with several workers) records a cell that raises in
    ``<cell>.failed.json`` with its traceback and goes on; the failure is listed in the report and the cell
    is tried again by the next run. Returns ``{"done", "ran", "remaining", "failed", "json", "markdown",
    "pareto"}``.
    """
    from ..report import write_bench_report, write_json

    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"workers={workers!r} must be a positive int, e.g. workers=4")
    if workers > 1 and (limit is not None or reverse or not resume):
        raise ConfigError(f"workers={workers} shares the grid by claiming cells: leave limit, reverse and fresh "
                          f"unset (for a fresh grid with workers, give it a new out= prefix)")
    check_grid(grid)
    if keep_going is None:
        keep_going = workers > 1
    prefix = Path(out or grid.out)
    cells_dir = _cells_dir(grid, out)
    cells_dir.mkdir(parents=True, exist_ok=True)
    fp = grid.fingerprint()
    ctx = _Context(grid)
    base = baseline_numbers(ctx, cells_dir / "baseline.json")
    ran = 0
    todo = grid.cells()
    if workers > 1:
        ran = _run_workers(grid, out, workers, keep_going, threads)
        resume, reverse, limit = True, False, 0  # below: only collect what the workers wrote and report it

    rerun = set() if resume else set(todo)  # --fresh: every cell runs again once

    def finished(method, target, seed):
        if (method, target, seed) in rerun:
            return None
        return _finished_cell(cells_dir / f"{cell_id(method, target, seed)}.json", fp)

    order = list(enumerate(todo))
    for i, (method, target, seed) in (reversed(order) if reverse else order):
        if finished(method, target, seed) is not None:
            continue
        if limit is not None and ran >= limit:
            break
        log.info("cell %d/%d: %s %s seed %d", i + 1, len(todo), method, target, seed)
        ran += _run_one(ctx, cells_dir, (method, target, seed), base, fp, progress, keep_going)
        rerun.discard((method, target, seed))
    results = [c for c in (finished(*cell) for cell in todo) if c is not None]
    protocol = {"model": grid.model, "data": grid.data, "baseline": _describe_baseline(grid.baseline),
                "fine-tune images": ctx.bundle(grid.seeds[0]).train.num_samples,
                "fine-tune epochs": grid.finetune_epochs,
                "fine-tune lr": grid.lr, "batch size": grid.batch_size,
                "BN recalibration batches": grid.calib_batches, "seeds": list(grid.seeds),
                "test set": "complete", "device": grid.device,
                "machine": "; ".join(sorted({c.get("machine") or _machine() for c in results})) or _machine()}
    missing = [f"{m} @ {t} seed {s}" for (m, t, s) in todo if finished(m, t, s) is None]
    failed = _failures(cells_dir, todo, fp, finished)
    notes = list(grid.notes)
    if failed:
        by_error: dict[str, list[str]] = {}
        for c, e in failed.items():
            by_error.setdefault(e, []).append(c)
        notes.append(f"{len(failed)} cells raised (tracebacks in {cells_dir.name}/<cell>.failed.json; the next run "
                     "tries them again): " + "; ".join(f"{', '.join(cs)}: {e}" for e, cs in by_error.items()) + ".")
    if missing:
        notes.append(f"{len(missing)} of {len(todo)} cells are not finished yet (rerun the command to continue "
                     f"the grid): " + ", ".join(missing) + ".")
    made = write_bench_report(results, prefix, protocol=protocol, command=command, notes=notes,
                              title=grid.name) if results else {}
    if results:
        write_json(grid.to_dict(), prefix.parent / f"{prefix.name}.grid.json")
    return {"done": len(results), "ran": ran, "remaining": len(todo) - len(results), "failed": len(failed),
            **{k: str(v) for k, v in made.items()}}


def _run_one(ctx: _Context, cells_dir: Path, cell: tuple[str, str, int], base: dict, fp: str, progress: bool,
             keep_going: bool, run_id: str = "") -> int:
    """Run one cell and write its file (or, with ``keep_going``, its failure); 1 when it finished."""
    import traceback

    from ..report import write_json

    cid = cell_id(*cell)
    try:
        data = run_cell(ctx, *cell, base, progress=progress)
    except Exception as exc:  # noqa: BLE001 - recorded, and re-raised unless keep_going
        if not keep_going:
            raise
        log.error("cell %s raised %s: %s", cid, type(exc).__name__, exc)
        write_json({"fingerprint": fp, "run": run_id, "method": cell[0], "target": cell[1], "seed": cell[2],
                    "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()},
                   cells_dir / f"{cid}.failed.json")
        return 0
    data["fingerprint"] = fp
    write_json(data, cells_dir / f"{cid}.json")
    (cells_dir / f"{cid}.failed.json").unlink(missing_ok=True)
    return 1


def _failures(cells_dir: Path, todo, fp: str, finished) -> dict[str, str]:
    out = {}
    for cell in todo:
        path = cells_dir / f"{cell_id(*cell)}.failed.json"
        if finished(*cell) is None and path.is_file():
            data = json.loads(path.read_text())
            if data.get("fingerprint") == fp:
                out[f"{cell[0]} @ {cell[1]} seed {cell[2]}"] = data["error"].splitlines()[0][:200]
    return out


def _cells_dir(grid: BenchGrid, out: str | None) -> Path:
    prefix = Path(out or grid.out)
    return prefix.parent / f"{prefix.name}.cells"


def _finished_cell(path: Path, fp: str) -> dict | None:
    """The cell written at ``path`` under protocol fingerprint ``fp``, or None."""
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("fingerprint") == fp:
            return data
    return None


def _failed_in(path: Path, run_id: str) -> bool:
    try:
        return json.loads(path.read_text()).get("run") == run_id
    except (OSError, ValueError):
        return False


def _claim(path: Path) -> bool:
    """Take the claim file ``path`` exclusively; a claim whose process is gone (same host) is taken over."""
    import socket

    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                host, pid = path.read_text().split()
            except (OSError, ValueError):
                return False  # being written right now, or unreadable: someone else's
            if host != socket.gethostname() or _alive(int(pid)):
                return False
            path.unlink(missing_ok=True)  # stale: its process died
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return True
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _worker(grid: BenchGrid, out: str | None, keep_going: bool, threads: int, run_id: str) -> int:
    """One worker process: claim and run unfinished cells in seed-major order until none is left (a cell that
    failed in this run, ``run_id``, is not tried again by another worker)."""
    torch.set_num_threads(threads)
    cells_dir = _cells_dir(grid, out)
    fp = grid.fingerprint()
    ctx = _Context(grid)
    base = baseline_numbers(ctx, cells_dir / "baseline.json")
    order = {k: i for i, k in enumerate(grid.seeds)}, {k: i for i, k in enumerate(grid.targets)}
    todo = sorted(grid.cells(), key=lambda c: (order[0][c[2]], order[1][c[1]]))
    ran = 0
    for cell in todo:
        cid = cell_id(*cell)

        def settled():  # finished, or failed in this run
            return (_finished_cell(cells_dir / f"{cid}.json", fp) is not None
                    or _failed_in(cells_dir / f"{cid}.failed.json", run_id))

        claim = cells_dir / f"{cid}.claim"
        if settled() or not _claim(claim):
            continue
        try:
            if settled():
                continue  # settled by another worker between the check and the claim
            log.info("worker %d: %s %s seed %d", os.getpid(), *cell)
            ran += _run_one(ctx, cells_dir, cell, base, fp, False, keep_going, run_id)
        finally:
            claim.unlink(missing_ok=True)
    return ran


def _run_workers(grid: BenchGrid, out: str | None, workers: int, keep_going: bool, threads: int) -> int:
    import multiprocessing as mp
    import uuid

    run_id = uuid.uuid4().hex[:12]
    with mp.get_context("spawn").Pool(workers) as pool:
        results = [pool.apply_async(_worker, (grid, out, keep_going, threads, run_id))
                   for _ in range(workers)]
        return sum(r.get() for r in results)


def _describe_baseline(name: str | None) -> str:
    if name is None:
        return "none (untrained model)"
    from ..train.baseline import baseline_info

    try:
        meta = baseline_info(name)
    except Exception:  # noqa: BLE001 - a plain model file has no training record
        return name
    images = meta.get("subset") or "all"
    return f"{name} (prunekit train: {meta.get('epochs')} epochs on {images} training images, seed {meta.get('seed')})"


def _machine(device: str = "cpu") -> str:
    import platform

    gpu = ""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        gpu = f"{torch.cuda.get_device_name(torch.device(device))}, "
    return (f"{gpu}{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
            f"with {torch.get_num_threads()} thread(s)")


def load_grid(path) -> BenchGrid:
    return BenchGrid.load(path)
