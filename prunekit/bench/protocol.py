"""The benchmark protocol and the resumable grid runner.

Protocol of one cell (method, target, seed), identical for prunekit methods and peer tools:

1. start from a fresh copy of the trained baseline; seed everything with the cell's seed;
2. prune to the target (MACs/params fraction kept, or weight sparsity); evaluate → ``acc_pruned``. The
   optimizer steps the method takes before the cut are counted (a process-wide optimizer hook), so every
   cell records the training it consumed: ``epochs_precut`` = the method's own ``info["epochs_trained"]``
   when it reports one, else the counted steps / batches per epoch;
3. re-estimate BatchNorm statistics on ``calib_batches`` training batches (structured targets) → ``acc_recal``;
4. fine-tune on the training subset (SGD, momentum 0.9, cosine lr) → ``acc_finetuned``: ``finetune_epochs``,
   plus, for a control row under ``equal_budget``, ``extra_epochs`` = the largest ``epochs_precut`` of any
   method row at the same target (as optimizer steps, so a fractional budget is honoured exactly);
5. count params and MACs (``prunekit.measure``, one counter for every tool) and time batch-1 latency
   (structured targets).

Control rows and Torch-Pruning rows run after the method rows of their target (:meth:`BenchGrid.waits`):
Torch-Pruning's ratio is searched to within 1% of the MACs/params fraction prunekit's method rows reached
(the target itself when they all land within 1% of it). Every accuracy is on the complete test split. Each
finished cell is written atomically to ``<out>.cells/<cell>.json`` with the grid's protocol fingerprint
(and, for a waiting row, the budget and goal it ran with); a rerun skips the cells whose file exists with
the same fingerprint (and budget), so a grid cut off half-way continues where it stopped.
"""
from __future__ import annotations

import dataclasses

import contextlib
import copy
import json
import logging
import os
import time
import traceback
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..recipe import parse_target
from . import peers
from .grid import BenchGrid, cell_id, split_variant
from .. import data, models, workflows as W
from ..report import write_bench_report, write_json
from ..train import fit
from ..train.adversarial import parse_attack, robust_accuracy
from ..train.baseline import baseline_info
from ..train.executor import make_executor

log = logging.getLogger(__name__)


def _nonzero(model: nn.Module) -> int:
    return int(sum(int((p != 0).sum()) for p in model.parameters()))


def check_grid(grid: BenchGrid) -> None:
    """Validate every method × target pair before anything runs (all problems reported at once)."""
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
            g = self.grid
            self._bundles[seed] = data.load(g.data, batch_size=g.batch_size, subset=g.subset, data_dir=g.data_dir,
                                            seed=seed, **g.data_options)
        return self._bundles[seed]

    def baseline(self) -> nn.Module:
        if self._baseline is None:
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
    fp = ctx.grid.fingerprint()
    if cache.is_file():
        data = json.loads(cache.read_text())
        if data.get("fingerprint") == fp:
            return data
    model = copy.deepcopy(ctx.baseline())
    b = ctx.bundle(ctx.grid.seeds[0])
    x = W._example_inputs(b).to(ctx.grid.device)
    model.to(ctx.grid.device)
    res = W._evaluate(model, b.test, ctx.grid.device)
    nums = {"fingerprint": fp, "acc_base": res["accuracy"],
            **{f"{k}_base": v for k, v in W._measure(model, x, False).items()}}
    if "perplexity" in res:  # language models
        nums["ppl_base"] = res["perplexity"]
    if ctx.grid.latency:
        nums["latency_base_ms"] = W._measure(model, x, True)["latency_ms"]

    write_json(nums, cache)
    return nums


class _StepCounter:
    """Counts optimizer steps taken anywhere in the process while active (the method's own training)."""

    def __init__(self):
        self.steps = 0

    def __enter__(self):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handle = register_optimizer_step_post_hook(self._hook)
        return self

    def _hook(self, optimizer, args, kwargs):
        self.steps += 1

    def __exit__(self, *exc):
        self._handle.remove()
        return False


class _Steps:
    """``steps`` batches from ``loader`` as one pass (a new pass of the loader whenever one ends)."""

    def __init__(self, loader, steps: int):
        self.loader, self.steps = loader, steps

    def __len__(self):
        return self.steps

    def __iter__(self):
        n = 0
        while n < self.steps:
            for batch in self.loader:
                if n >= self.steps:
                    return
                n += 1
                yield batch


def precut_epochs(steps: int, steps_per_epoch: int, info: dict) -> tuple[float, str]:
    """Training epochs a cell consumed before the cut, and where the figure comes from.

    Example:
        >>> precut_epochs(36, 36, {}), precut_epochs(18, 36, {"epochs_trained": 2})
        ((1.0, 'counted'), (2.0, 'reported'))
    """
    reported = info.get("epochs_trained")
    if isinstance(reported, (int, float)) and not isinstance(reported, bool):
        return float(reported), "reported"
    return (steps / steps_per_epoch if steps_per_epoch else 0.0), "counted"


def _finetune(model, bundle, recipe, epochs: float, callbacks, progress: bool) -> int:
    """Fine-tune ``epochs`` epochs (fractional: as optimizer steps); returns the steps taken."""
    spe = len(bundle.train)
    steps = round(epochs * spe)
    if steps <= 0:
        return 0
    if abs(epochs - round(epochs)) < 1e-9:
        fit(model, bundle.train, W._train_config(recipe, int(round(epochs)), progress), callbacks=callbacks)
    else:  # one pass of exactly `steps` batches: the cosine schedule spans the whole budget
        fit(model, _Steps(bundle.train, steps), W._train_config(recipe, 1, progress), callbacks=callbacks)
    return steps


def run_cell(ctx: _Context, method: str, target: str, seed: int, base: dict, progress: bool = False,
             deps: dict | None = None) -> dict:
    """Run one cell of the protocol and return its numbers (nothing is written here).

    ``deps`` (for the rows that wait on the method rows, see :func:`dependencies`): ``extra_epochs`` of
    fine-tuning on top of ``finetune_epochs`` and ``goal``, the MACs/params fraction Torch-Pruning matches.
    """
    deps = dict(deps or {})
    g = ctx.grid
    t0 = time.perf_counter()
    bundle = ctx.bundle(seed)
    model = copy.deepcopy(ctx.baseline()).to(g.device).eval()
    x = W._example_inputs(bundle).to(g.device)
    kind, _ = parse_target(target)
    torch.manual_seed(seed)
    recipe = g.cell_recipe(method, target, seed)
    callbacks, info, masked = [], {}, None
    with _StepCounter() as counter:
        if method.startswith(peers.TP_PREFIX):
            info = peers.tp_prune_(model, x, method, target, calib=W.calib_batches(bundle, g.calib_batches),
                                   num_classes=bundle.num_classes, ignore=tuple(g.ignore), seed=seed,
                                   goal=deps.get("goal"))
        elif method.startswith(peers.TORCH_PRUNE_PREFIX):
            masked = peers.torch_prune_(model, method, target, tuple(g.ignore))
        else:
            spec = W._check_method(recipe.method, kind)  # the id of a variant id[option=value]
            callbacks, info = W._apply_pruning(model, x, recipe, spec, bundle, progress)
            model = info.pop("model", model)
    t_prune = time.perf_counter() - t0
    spe = len(bundle.train)
    cell = {"method": method, "target": target, "seed": seed,
            "source": peers.peer_source(method) if peers.is_peer(method) else "prunekit",
            "control": g.is_control(method)}
    res = W._evaluate(model, bundle.test, g.device)
    cell["acc_pruned"] = res["accuracy"]
    if "perplexity" in res:  # language models: perplexity right after the cut and after the fine-tune
        cell["ppl_pruned"] = res["perplexity"]
    cell["acc_recal"] = None
    if g.calib_batches > 0 and kind != "sparsity":
        W.recalibrate_bn(model, W.calib_batches(bundle, g.calib_batches), g.device)
        cell["acc_recal"] = W._evaluate(model, bundle.test, g.device)["accuracy"]
    precut, how = precut_epochs(counter.steps, spe, info)
    extra = float(deps.get("extra_epochs") or 0.0)
    ft_steps = _finetune(model, bundle, recipe, g.finetune_epochs + extra, callbacks, progress)
    cell.update({"steps_per_epoch": spe, "precut_steps": counter.steps, "epochs_precut": precut,
                 "epochs_precut_source": how, "extra_epochs": extra, "finetune_steps": ft_steps,
                 "epochs_finetune": ft_steps / spe if spe else 0.0})
    cell["epochs_total"] = cell["epochs_precut"] + cell["epochs_finetune"]
    if deps:
        cell["deps"] = deps
    if masked is not None:
        peers.torch_prune_finalize(masked)
    W._finalize_masks(model)
    model.eval()
    res = W._evaluate(model, bundle.test, g.device)
    cell["acc_finetuned"] = res["accuracy"]
    if "perplexity" in res:
        cell["ppl_finetuned"] = res["perplexity"]
    if g.robust is not None:  # the grid's attack on the fine-tuned model, in the data's pixel space
        cell["acc_robust"] = robust_accuracy(model, bundle.test, device=g.device, seed=seed,
                                             **parse_attack(g.robust))["robust"]
    cell.update(W._measure(model, x, False))
    cell["nonzero_params"] = _nonzero(model)
    cell.update({k: v for k, v in base.items() if k not in ("fingerprint", "latency_base_ms")})
    if g.latency and kind != "sparsity":  # baseline and pruned model back to back: both see the same load
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


def _kept(cell: dict, kind: str) -> float | None:
    key = "macs" if kind == "macs" else "params"
    if cell.get(key) is None or not cell.get(f"{key}_base"):
        return None
    return cell[key] / cell[f"{key}_base"]


def dependencies(grid: BenchGrid, method: str, target: str, finished, failed) -> dict | None:
    """What a waiting row (:meth:`BenchGrid.waits`) runs with at ``target``, from the method rows' cells;
    None while one of them is neither finished nor failed.

    ``extra_epochs`` (control rows under ``equal_budget``): the largest ``epochs_precut`` of a method row at
    ``target``, so that no method row trained more than a control row (``budget_from`` names it). ``goal``
    (Torch-Pruning rows, MACs/params targets): the target's fraction when every prunekit method row landed
    within 1% of it, else the mean fraction they reached.
    """
    rows = [(m, s) for m in grid.methods if not grid.waits(m) for s in grid.seeds]
    cells = []
    for m, s in rows:
        cell = finished(m, target, s)
        if cell is None and not failed(m, target, s):
            return None
        if cell is not None:
            cells.append(cell)
    deps: dict = {}
    if grid.equal_budget and grid.is_control(method):
        top = max(cells, key=lambda c: c.get("epochs_precut") or 0.0, default=None)
        extra = round(float(top.get("epochs_precut") or 0.0), 6) if top is not None else 0.0
        deps["extra_epochs"] = extra
        deps["budget_from"] = top["method"] if top is not None and extra > 0 else None
    kind, value = parse_target(target)
    if method.startswith(peers.TP_PREFIX) and kind != "sparsity":
        kept = [k for k in (_kept(c, kind) for c in cells if c.get("source") == "prunekit") if k is not None]
        if kept and any(abs(k / value - 1) > 0.01 for k in kept):
            deps["goal"] = round(sum(kept) / len(kept), 6)
        else:
            deps["goal"] = float(value)
    return deps


def run_grid(grid: BenchGrid, *, out: str | None = None, resume: bool = True, progress: bool = True,
             limit: int | None = None, command: str | None = None, reverse: bool = False, workers: int = 1,
             keep_going: bool | None = None, threads: int = 1, executor: str = "local",
             address: str | None = None) -> dict:
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

    ``executor="ray"`` runs the unfinished cells as Ray tasks instead (one CPU each; :mod:`prunekit.train.executor`):
    on a private local instance of ``workers`` CPUs, or on the cluster at ``address``. Every cell seeds itself, so
    a cell's numbers are those of the local run; this process writes each cell's file as its task ends (a
    cluster needs no shared file system), the method rows first, then the rows that wait on them.
    """
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"workers={workers!r} must be a positive int, e.g. workers=4")
    ex = make_executor(executor, address=address, num_cpus=workers if executor == "ray" and address is None else
                       None)
    if executor == "ray" and (limit is not None or reverse or not resume):
        raise ConfigError("executor='ray' runs every unfinished cell: leave limit, reverse and fresh unset (for a "
                          "fresh grid, give it a new out= prefix)")
    if executor == "local" and workers > 1 and (limit is not None or reverse or not resume):
        raise ConfigError(f"workers={workers} shares the grid by claiming cells: leave limit, reverse and fresh "
                          f"unset (for a fresh grid with workers, give it a new out= prefix)")
    check_grid(grid)
    if keep_going is None:
        keep_going = workers > 1 or executor == "ray"
    prefix = Path(out or grid.out)
    cells_dir = _cells_dir(grid, out)
    cells_dir.mkdir(parents=True, exist_ok=True)
    fp = grid.fingerprint()
    ctx = _Context(grid)
    base = baseline_numbers(ctx, cells_dir / "baseline.json")
    ran = 0
    todo = grid.cells()
    if executor == "ray":
        ran = _run_tasks(grid, ex, cells_dir, base, fp, keep_going, threads)
        resume, reverse, limit = True, False, 0  # below: only collect what the tasks wrote and report it
    elif workers > 1:
        ran = _run_workers(grid, out, workers, keep_going, threads)
        resume, reverse, limit = True, False, 0  # below: only collect what the workers wrote and report it

    rerun = set() if resume else set(todo)  # --fresh: every cell runs again once
    state = _GridState(grid, cells_dir, fp)

    def finished(method, target, seed):
        if (method, target, seed) in rerun:
            return None
        return state.finished(method, target, seed)

    state.finished_fn = finished
    numbered = list(enumerate(todo))
    phases = ([c for c in numbered if not grid.waits(c[1][0])], [c for c in numbered if grid.waits(c[1][0])])
    for phase in phases:
        for i, (method, target, seed) in (reversed(phase) if reverse else phase):
            if finished(method, target, seed) is not None:
                continue
            if limit is not None and ran >= limit:
                break
            deps = state.deps(method, target)
            if grid.waits(method) and deps is None:
                continue  # its target's method rows are not all finished yet
            log.info("cell %d/%d: %s %s seed %d", i + 1, len(todo), method, target, seed)
            ran += _run_one(ctx, cells_dir, (method, target, seed), base, fp, progress, keep_going, deps=deps)
            rerun.discard((method, target, seed))
    results = [c for c in (finished(*cell) for cell in todo) if c is not None]
    protocol = {"model": grid.model, "data": grid.data, "baseline": _describe_baseline(grid.baseline),
                "fine-tune images": ctx.bundle(grid.seeds[0]).train.num_samples,
                "fine-tune epochs": grid.finetune_epochs, "pre-cut epochs (training-time methods)": grid.prune_epochs,
                "equal budget": _describe_budget(grid),
                "fine-tune lr": grid.lr, "batch size": grid.batch_size,
                "BN recalibration batches": grid.calib_batches, "seeds": list(grid.seeds),
                "test set": "complete", "device": grid.device,
                "machine": "; ".join(sorted({c.get("machine") or _machine() for c in results})) or _machine()}
    missing = [f"{m} @ {t} seed {s}" for (m, t, s) in todo if finished(m, t, s) is None]
    failed = _failures(cells_dir, todo, fp, finished)
    notes = list(grid.notes) + _fairness_notes(grid, results)
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
             keep_going: bool, run_id: str = "", deps: dict | None = None) -> int:
    """Run one cell and write its file (or, with ``keep_going``, its failure); 1 when it finished."""
    try:
        data = run_cell(ctx, *cell, base, progress=progress, deps=deps)
    except Exception as exc:  # noqa: BLE001 - recorded, and re-raised unless keep_going
        if not keep_going:
            raise
        return _record(cells_dir, cell, fp, None, exc, traceback.format_exc(), run_id)
    return _record(cells_dir, cell, fp, data, None, "", run_id)


def _record(cells_dir: Path, cell: tuple[str, str, int], fp: str, data: dict | None, exc: BaseException | None,
            tb: str, run_id: str = "") -> int:
    """Write a finished cell's file (1) or its failure's (0)."""
    cid = cell_id(*cell)
    if exc is not None:
        log.error("cell %s raised %s: %s", cid, type(exc).__name__, exc)
        write_json({"fingerprint": fp, "run": run_id, "method": cell[0], "target": cell[1], "seed": cell[2],
                    "error": f"{type(exc).__name__}: {exc}", "traceback": tb}, cells_dir / f"{cid}.failed.json")
        return 0
    data["fingerprint"] = fp
    write_json(data, cells_dir / f"{cid}.json")
    (cells_dir / f"{cid}.failed.json").unlink(missing_ok=True)
    return 1


_TASK_CONTEXTS: dict = {}  # a Ray worker process keeps one grid's data and baseline across its cells


def _task_cell(grid: BenchGrid, cell: tuple[str, str, int], base: dict, deps: dict | None, threads: int) -> dict:
    """One cell as a job of an executor (a Ray task): the same :func:`run_cell` a local run calls."""
    torch.set_num_threads(threads)
    fp = grid.fingerprint()
    if fp not in _TASK_CONTEXTS:
        _TASK_CONTEXTS.clear()
        _TASK_CONTEXTS[fp] = _Context(grid)
    return run_cell(_TASK_CONTEXTS[fp], *cell, base, progress=False, deps=deps)


def _run_tasks(grid: BenchGrid, ex, cells_dir: Path, base: dict, fp: str, keep_going: bool, threads: int) -> int:
    """Every unfinished cell as a job of ``ex``: the method rows, then the rows that wait on them."""
    import uuid

    run_id = uuid.uuid4().hex[:12]
    ran, started = 0, False
    with contextlib.ExitStack() as stack:
        for waiting in (False, True):
            state = _GridState(grid, cells_dir, fp)
            jobs = []
            for cell in grid.cells():
                if grid.waits(cell[0]) != waiting or state.finished(*cell) is not None:
                    continue
                deps = state.deps(cell[0], cell[1])
                if waiting and deps is None:
                    continue  # its target's method rows did not all finish
                jobs.append((grid, cell, base, deps, threads))
            log.info("%s executor: %d cells", ex.kind, len(jobs))
            if not jobs:
                continue
            if not started:  # the executor starts (Ray: an instance or a connection) only for a cell to run
                stack.enter_context(ex)
                started = True
            for i, data, exc in ex.run(_task_cell, jobs):
                cell = jobs[i][1]
                if exc is not None and not keep_going:
                    raise exc
                tb = "".join(traceback.format_exception(exc)) if exc is not None else ""
                ran += _record(cells_dir, cell, fp, data, exc, tb, run_id)
    return ran


class _GridState:
    """Finished cells of one grid on disk; a waiting row's cell counts only under its current dependencies."""

    def __init__(self, grid: BenchGrid, cells_dir: Path, fp: str):
        self.grid, self.cells_dir, self.fp = grid, cells_dir, fp
        self.finished_fn = self.finished_plain
        self._deps: dict = {}

    def finished_plain(self, method, target, seed):
        return _finished_cell(self.cells_dir / f"{cell_id(method, target, seed)}.json", self.fp)

    def failed(self, method, target, seed) -> bool:
        path = self.cells_dir / f"{cell_id(method, target, seed)}.failed.json"
        try:
            return path.is_file() and json.loads(path.read_text()).get("fingerprint") == self.fp
        except (OSError, ValueError):
            return False

    def deps(self, method, target) -> dict | None:
        if not self.grid.waits(method):
            return None
        # settled method rows do not change within one run (they run first), so a found answer is kept
        key = (self.grid.is_control(method), method.startswith(peers.TP_PREFIX), target)
        if key not in self._deps:
            found = dependencies(self.grid, method, target, self.finished_fn, self.failed)
            if found is None:
                return None
            self._deps[key] = found
        return dict(self._deps[key])

    def finished(self, method, target, seed):
        cell = self.finished_plain(method, target, seed)
        if cell is None or not self.grid.waits(method):
            return cell
        deps = self.deps(method, target)
        return cell if deps is not None and cell.get("deps") == deps else None


def _describe_budget(grid: BenchGrid) -> str:
    if not grid.equal_budget:
        return "off (every row fine-tunes the same epochs; methods train before the cut on top)"
    return ("on (each control row fine-tunes finetune epochs + the largest pre-cut training of a method row at "
            "its target, as optimizer steps)")


def _fairness_notes(grid: BenchGrid, cells: list[dict]) -> list[str]:
    """Sentences under the table: how the budget and Torch-Pruning's MACs were matched, per target."""
    notes = []
    for target in grid.targets:
        at = [c for c in cells if c["target"] == target]
        ctrl = [c for c in at if c.get("control") and c.get("deps", {}).get("extra_epochs") is not None]
        if grid.equal_budget and ctrl:
            d = ctrl[0]["deps"]
            names = ", ".join(sorted({c["method"] for c in ctrl}))
            src = f" ({d['budget_from']}'s pre-cut training)" if d.get("budget_from") else ""
            notes.append(f"Budget at {target}: control rows ({names}) fine-tune {grid.finetune_epochs} + "
                         f"{d['extra_epochs']:g} epochs{src}, the largest pre-cut training of any method row, so no "
                         f"method row consumed more training than a control row.")
        tp = [c for c in at if c["method"].startswith(peers.TP_PREFIX) and c.get("deps", {}).get("goal")]
        if tp:
            goal = tp[0]["deps"]["goal"]
            kept = [c["info"].get("kept") for c in tp if c.get("info", {}).get("kept") is not None]
            span = f"; they landed at {min(kept):.4f}-{max(kept):.4f}" if kept else ""
            notes.append(f"Torch-Pruning at {target}: ratio searched (uniform bisection, then a per-layer ratio mix) "
                         f"to within 1% of {goal:.4f}, the fraction prunekit's method rows reached (or the target "
                         f"when they all land within 1% of it){span}.")
    off = sorted({(c["method"], c["target"]) for c in cells if c.get("engaged") is False})
    for method, target in off:
        row = [c for c in cells if c["method"] == method and c["target"] == target]
        warns = sorted({w for c in row for w in c.get("warnings", [])})
        n_off = sum(1 for c in row if c.get("engaged") is False)
        notes.append(f"NOT ENGAGED: {method} at {target}: its mechanism did not act in {n_off} of {len(row)} "
                     f"seed(s), so the row is not that method's result. " + " ".join(warns))
    return notes


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


def _worker(grid: BenchGrid, out: str | None, keep_going: bool, threads: int, run_id: str,
            waiting: bool = False) -> int:
    """One worker process: claim and run unfinished cells in seed-major order until none is left (a cell that
    failed in this run, ``run_id``, is not tried again by another worker). ``waiting``: the rows that wait on
    the method rows (run after every method row is settled); otherwise the method rows."""
    torch.set_num_threads(threads)
    cells_dir = _cells_dir(grid, out)
    fp = grid.fingerprint()
    ctx = _Context(grid)
    base = baseline_numbers(ctx, cells_dir / "baseline.json")
    state = _GridState(grid, cells_dir, fp)
    order = {k: i for i, k in enumerate(grid.seeds)}, {k: i for i, k in enumerate(grid.targets)}
    todo = sorted((c for c in grid.cells() if grid.waits(c[0]) == waiting),
                  key=lambda c: (order[0][c[2]], order[1][c[1]]))
    ran = 0
    for cell in todo:
        cid = cell_id(*cell)

        def settled():  # finished, or failed in this run
            return (state.finished(*cell) is not None
                    or _failed_in(cells_dir / f"{cid}.failed.json", run_id))

        claim = cells_dir / f"{cid}.claim"
        deps = state.deps(cell[0], cell[1])
        if settled() or (waiting and deps is None) or not _claim(claim):
            continue
        try:
            if settled():
                continue  # settled by another worker between the check and the claim
            log.info("worker %d: %s %s seed %d", os.getpid(), *cell)
            ran += _run_one(ctx, cells_dir, cell, base, fp, False, keep_going, run_id, deps=deps)
        finally:
            claim.unlink(missing_ok=True)
    return ran


def _run_workers(grid: BenchGrid, out: str | None, workers: int, keep_going: bool, threads: int) -> int:
    """The method rows first, then (once they are settled) the rows that wait on them."""
    import multiprocessing as mp
    import uuid

    run_id = uuid.uuid4().hex[:12]
    ran = 0
    with mp.get_context("spawn").Pool(workers) as pool:
        for waiting in (False, True):
            results = [pool.apply_async(_worker, (grid, out, keep_going, threads, run_id, waiting))
                       for _ in range(workers)]
            ran += sum(r.get() for r in results)
    return ran


def _describe_baseline(name: str | None) -> str:
    if name is None:
        return "none (untrained model)"

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


def bench_job(grid: str, *, out: str | None = None, resume: bool = True, progress: bool = True,
              limit: int | None = None, reverse: bool = False, workers: int = 1, keep_going: bool | None = None,
              threads: int = 1, seeds: list[int] | None = None, executor: str = "local",
              address: str | None = None) -> dict:
    """Run (or continue) a benchmark grid described by a YAML file; see :mod:`prunekit.bench`.

    ``seeds``: run only these of the grid's seeds (e.g. ``[0]``: one complete table, control rows included,
    before the other seeds); the cells are the grid's own, so a later run without ``seeds`` reuses them.
    """
    spec = load_grid(grid)
    if seeds is not None:
        unknown = [s for s in seeds if s not in spec.seeds]
        if not seeds or unknown:
            raise ConfigError(f"seeds={list(seeds)!r}: run a non-empty subset of the grid's seeds "
                              f"{list(spec.seeds)} (e.g. --seeds {spec.seeds[0]})")
        spec = dataclasses.replace(spec, seeds=tuple(s for s in spec.seeds if s in seeds))
    command = (f"prunekit bench {grid}" + (f" --out {out}" if out else "")
               + (f" --seeds {' '.join(map(str, seeds))}" if seeds is not None else "")
               + (f" --workers {workers}" if workers > 1 else "")
               + (f" --executor {executor}" if executor != "local" else "")
               + (f" --address {address}" if address else ""))
    return run_grid(spec, out=out, resume=resume, progress=progress, limit=limit, command=command, reverse=reverse,
                    workers=workers, keep_going=keep_going, threads=threads, executor=executor, address=address)
