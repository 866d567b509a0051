"""The verbs behind the ``prunekit`` command: one function per subcommand, no printing.

Each verb validates everything it can *before* it touches a model or a file, and writes its outputs into a
hidden staging folder that is moved into place only when the job has succeeded, so a failed job leaves no
files behind and never half-overwrites an earlier run.

Example:
    >>> rows = methods_table()
    >>> len(rows), sorted(rows[0])[:3]
    (93, ['id', 'kind', 'left_out'])
"""
from __future__ import annotations

import copy
import glob
import logging
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._registry import closest, unknown_name_message
from .errors import ConfigError, PrunekitError
from .io import load as _load_saved
from .io import save as _save_saved
from .train.checkpoint import (_TMP_SUFFIX, _alive, _rng_states, _signals_unwind, _sweep_stale, atomic_write_bytes,
                               read_record, read_verified_tensors, set_rng_states, sha256_bytes, tensors_to_bytes)
from .train.resume_state import extra_buffers, fit_checkpoints, restore_extra_buffers, sync_masks
from .recipe import LATENCY_KINDS, LATENCY_METHODS, Recipe, parse_target
from . import data as pk_data, data, models
from .criteria import CRITERIA, get_criterion
from .io import load, save
from .masks import finalize_, get_masks, get_weight_criterion
from .measure import latency, latency as time_forward, measure
from .methods import METHODS, RunContext, beyond_catalog, catalog, get_method, load_all
from .report import write_json, write_run_report
from .train import TrainConfig, baseline as baselines, evaluate, fit
from .train.adversarial import parse_attack, robust_accuracy
from .train.progress import ProgressBar
from .train.search import search
from .train.subnet_eval import recalibrate_bn
from .api import prune_
from .data import first_batches, first_examples
from .report.search import write_search_report
import prunekit as pk

log = logging.getLogger(__name__)

__all__ = ["methods_table", "default_recipe", "resolve_recipe", "run_job", "train_job", "eval_job", "prune_job", "inspect_job",
           "export_onnx", "layer_stats", "recalibrate_bn", "resolve_model", "METHOD_STATUSES"]

METHOD_STATUSES = ("implemented", "partial", "not-meaningful", "not-yet")
CRITERION_PREFIX = "criterion:"
DEFAULT_METHOD = "l1-filter"
DEFAULT_FALLBACK = "criterion:l1"


# --- methods -----------------------------------------------------------------------------------------------
def methods_table(status: str | None = None, *, beyond: bool = False) -> list[dict]:
    """One row per paper of the catalogue, in catalogue order, with the status of its implementation;
    ``beyond=True``: the methods beyond the seed list instead (each row's ``section`` says which)."""
    if status is not None and status not in METHOD_STATUSES:
        hint = closest(status, METHOD_STATUSES)
        raise ConfigError(f"status={status!r} is not a method status"
                          + (f"; did you mean {hint!r}?" if hint else "")
                          + f" Choose one of: {', '.join(METHOD_STATUSES)}")
    load_all()
    rows = []
    for pid, entry in (beyond_catalog() if beyond else catalog()).items():
        spec = METHODS.get(pid) if pid in METHODS else None
        rows.append({
            "id": pid, "section": "beyond" if beyond else "list", "title": entry.get("title", ""), "venue": entry.get("venue", ""),
            "year": entry.get("year"), "type": entry.get("type", ""),
            "status": spec.status if spec else "not-yet",
            "kind": spec.kind if spec else "",
            "left_out": spec.left_out if spec else "",
            "link": entry.get("link", ""),
            "options": spec.defaults if spec else {},
            "needs": list(spec.needs) if spec else [],
            "telemetry": list(spec.telemetry.keys) if spec and spec.telemetry else [],
        })
    if status is not None:
        rows = [r for r in rows if r["status"] == status]
    return rows


def default_recipe() -> Recipe:
    """The embedded default of ``prunekit run``: shipped ResNet-20, half the MACs, brief fine-tune.

    Uses the ``l1-filter`` method once it is registered and the engine's plain ``l1`` criterion until then
    (the report says which ran).
    """
    load_all()
    method = DEFAULT_METHOD if DEFAULT_METHOD in METHODS else DEFAULT_FALLBACK
    return Recipe(method=method)


def parse_key_values(items, flag: str, example: str) -> dict:
    """``["KEY=VALUE", ...]`` from the command line as a dict, each value read as YAML (``8`` an int)."""
    import yaml

    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {item!r} must be KEY=VALUE, e.g. {flag} {example}")
        parsed[key] = yaml.safe_load(value)
    return parsed


def resolve_recipe(recipe_path: str | None, flags: dict, options: list[str] = ()) -> tuple[Recipe, str]:
    """The recipe of ``prunekit run``: the file (or the embedded default), then the flags given on top.

    ``flags`` holds only the flags given; ``baseline="none"`` means no baseline and ``subset=None`` every
    training image; ``options`` are ``KEY=VALUE`` method options (values read as YAML). Returns the recipe
    and a note for the report when the default had to use a stand-in method.
    """
    import dataclasses

    given = dict(flags)
    if options:
        given["options"] = parse_key_values(options, "--option", "criterion=l2")
    note = ""
    if recipe_path:
        recipe = Recipe.load(recipe_path)
    else:
        recipe = default_recipe()
        if recipe.method != DEFAULT_METHOD and "method" not in given:
            note = (f"method {DEFAULT_METHOD!r} is not registered yet: the default ran the engine's plain l1 "
                    f"filter criterion ({recipe.method})")
    explicit_none = {k for k in ("baseline", "subset") if k in given and
                     (given[k] is None or (isinstance(given[k], str) and given[k].lower() == "none"))}
    if not recipe_path and "baseline" not in given and ("model" in given or "data" in given) \
            and recipe.baseline is not None:
        # the default baseline is the requested model's: never prune the default model under another name
        given["baseline"] = f"{given.get('model', recipe.model)}-{given.get('data', recipe.data)}"
    recipe = recipe.override(**{k: v for k, v in given.items() if k not in explicit_none})
    if explicit_none:
        recipe = dataclasses.replace(recipe, **{k: None for k in explicit_none})
    return recipe, note


# --- helpers -----------------------------------------------------------------------------------------------
RUN_MARKER = ".prunekit-run"  # written into every output folder of `prunekit run`/`prune`: "a previous run"
_OWN_PREFIXES = (".prunekit.partial-", ".prunekit.resume")  # prunekit's working folders inside `--out .`


def _is_previous_run(folder: Path) -> bool:
    """True when ``folder`` holds a prunekit run and nothing else (a file added later, e.g. notes, is the user's)."""
    if not (folder / RUN_MARKER).is_file():
        return False
    return {p.name for p in folder.iterdir() if not p.name.startswith(_OWN_PREFIXES)} - {RUN_MARKER} \
        <= _marker_files(folder)


def _marker_files(folder: Path) -> set:
    import json

    try:
        return set(json.loads((folder / RUN_MARKER).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def _write_marker(stage: Path) -> None:
    import json

    files = sorted(p.name for p in stage.iterdir())
    (stage / RUN_MARKER).write_text(json.dumps({"type": "prunekit.run", "version": 1, "files": files}) + "\n")


def _inside_cwd_chain(folder: Path) -> bool:
    """True when ``folder`` is the working directory or one of its ancestors (it cannot be swapped away)."""
    here = Path.cwd().resolve()
    target = folder.resolve()
    return target == here or target in here.parents


def _sweep_partials(prefix: str, where: Path) -> None:
    """Remove the staging folders ``where/.<prefix>.{partial,old}-<pid>-*`` of processes killed (SIGKILL) mid-run."""
    for p in where.glob(f".{glob.escape(prefix)}.*-*-*"):
        kind, _, rest = p.name[len(prefix) + 2:].partition("-")
        pid = rest.split("-")[0]
        if kind in ("partial", "old") and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _swap(a: Path, b: Path) -> bool:
    """Exchange the folders ``a`` and ``b`` in one step (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0


@contextmanager
def _staged_output(out: str | os.PathLike, *, force: bool = False):
    """Yield a staging folder whose content replaces ``out`` as a whole on success; deleted on failure.

    ``out`` must be missing, empty, a previous run (its ``.prunekit-run`` marker) or ``force`` must be given
    (see :func:`_check_out_free`). The new folder is completed (marker included), then swapped with the old
    one in one rename where the system allows it, and the old one deleted: never merged. When ``out`` is the
    working directory (``--out .``) the folder itself stays and only its entries are replaced. Exceptions,
    Ctrl-C and SIGTERM remove the staging folder; one left by SIGKILL is removed by the next run to ``out``.
    """
    out = Path(os.path.abspath(out))
    _check_out_free(out, force=force)
    in_place = out.is_dir() and _inside_cwd_chain(out)
    where, prefix = (out, "prunekit") if in_place else (out.parent, out.name)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    stage = where / f".{prefix}.partial-{tag}"
    with _signals_unwind():
        try:
            where.mkdir(parents=True, exist_ok=True)
            _sweep_partials(prefix, where)
            stage.mkdir()
        except OSError as e:
            raise ConfigError(f"out={str(out)!r}: cannot write in {str(where)!r} ({e.strerror}); choose a writable "
                              f"folder for --out") from None
        try:
            yield stage
            _write_marker(stage)
            if in_place:
                _replace_entries(out, stage)
            elif not out.exists():
                os.replace(stage, out)
            elif _swap(stage, out):
                shutil.rmtree(stage)  # now holds the old run
            else:
                old = where / f".{prefix}.old-{tag}"
                os.replace(out, old)
                os.replace(stage, out)
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise


def _replace_entries(out: Path, stage: Path) -> None:
    """``--out .``: delete the previous run's entries in ``out`` and move the staged ones in."""
    for p in out.iterdir():
        if p != stage and not p.name.startswith(_OWN_PREFIXES):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    for p in sorted(stage.iterdir(), key=lambda p: p.name == RUN_MARKER):  # the marker last
        os.replace(p, out / p.name)
    stage.rmdir()


def _too_precious(folder: Path) -> bool:
    target = folder.resolve()
    here = Path.cwd().resolve()
    return target == Path(target.anchor) or target == Path.home().resolve() or target in here.parents


def _check_out_free(out: str | os.PathLike, force: bool = False) -> None:
    """Refuse an ``out`` holding anything but a previous prunekit run (unless ``force``), a file, a read-only folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={str(out)!r} is a file; pass a folder path for the outputs (a new or empty folder, "
                          f"or a previous run's)")
    if out.is_dir():
        entries = sorted(p.name for p in out.iterdir() if not p.name.startswith(_OWN_PREFIXES))
        if entries and force and not _is_previous_run(out) and _too_precious(out):
            raise ConfigError(f"out={str(out)!r} is the file system root, the home folder or a folder above the "
                              f"working directory; --force will not delete it. Choose a new folder for --out")
        if entries and not force and not _is_previous_run(out):
            entries = [e for e in entries if e != RUN_MARKER and e not in _marker_files(out)]
            shown = ", ".join(entries[:5]) + (f", … ({len(entries)} entries)" if len(entries) > 5 else "")
            what = ("holds files that prunekit did not write" if (out / RUN_MARKER).exists()
                    else "holds files that are not a prunekit run")
            raise ConfigError(f"out={str(out)!r} {what} ({shown}); nothing was written. Choose a new or empty "
                              f"folder, or pass --force to replace the folder and delete what it holds")
        if not os.access(out, os.W_OK | os.X_OK):
            raise ConfigError(f"out={str(out)!r} is read-only; choose a writable folder for --out")
    if out.is_dir() and _inside_cwd_chain(out):
        return  # `--out .`: written in place, the parent folder is not touched
    parent = Path(os.path.abspath(out)).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"out={str(out)!r}: cannot create it in the read-only folder {str(parent)!r}; choose a "
                          f"writable folder for --out")


RUN_CHECKPOINT_EVERY = 100  # fine-tune steps between the checkpoints `prunekit run --resume` continues from


def _resume_dir(out: str | os.PathLike) -> Path:
    """Hidden checkpoint folder of the run writing ``out``: beside it, or inside it for ``--out .``."""
    out = Path(os.path.abspath(out))
    if out.is_dir() and _inside_cwd_chain(out):
        return out / ".prunekit.resume"
    return out.parent / f".{out.name}.resume"


def _prepare_resume(recipe: Recipe, resume: bool) -> Path:
    """The checkpoint folder of this run: checked against the recipe when resuming, emptied for a fresh run."""
    import json

    d = _resume_dir(recipe.out)
    record = d / "recipe.json"
    if resume:
        try:
            saved = json.loads(record.read_text())
        except (OSError, ValueError):
            raise ConfigError(f"--resume: no interrupted run writing out={recipe.out!r} to continue; run the same "
                              f"command without --resume") from None
        now = json.loads(json.dumps(recipe.to_dict()))
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        if diff:
            raise ConfigError(f"--resume: the interrupted run writing out={recipe.out!r} used other settings "
                              f"({', '.join(f'{k}: {saved.get(k)!r} -> {now.get(k)!r}' for k in diff[:5])}); "
                              f"resume with the same flags, or run without --resume to start over")
        return d
    shutil.rmtree(d, ignore_errors=True)  # a fresh run: an older interrupted run's checkpoint is stale
    try:
        atomic_write_bytes(record, (json.dumps(recipe.to_dict(), indent=1, default=str) + "\n").encode())
    except PrunekitError as e:
        raise ConfigError(f"out={recipe.out!r}: {e}") from None
    return d


def _progress_enabled(progress: bool) -> bool:
    return progress and os.environ.get("PRUNEKIT_PROGRESS", "1") != "0"


def _check_data_name(name: str) -> None:
    names = getattr(data, "DATASETS", None)
    if names is not None and name.split(":")[0] not in names:
        raise ConfigError(unknown_name_message("data set", name, list(names), "data"))


def _check_model_name(name: str) -> None:
    if ":" in name or Path(name).exists():
        return

    registry = getattr(models, "MODELS", None)
    if registry is not None and name not in registry:
        raise ConfigError(unknown_name_message("model", name, list(registry), "model"))


def _check_method(method: str, target_kind: str) -> Any:
    """Return the MethodSpec (or None for a bare criterion) after checking it can run on ``target_kind``."""
    if method.startswith(CRITERION_PREFIX):
        name = method[len(CRITERION_PREFIX):]
        if target_kind in LATENCY_KINDS:
            raise ConfigError(f"method={method!r} with a latency target: a bare criterion allocates by MACs or "
                              f"params; give target=macs=<kept>, or a method that searches widths under a latency "
                              f"table ({', '.join(LATENCY_METHODS)}) with options latency_table: PATH")
        if target_kind == "sparsity":
            return None

        CRITERIA.get(name, argument="method criterion")
        return None

    load_all()
    if method not in catalog() and method not in beyond_catalog():
        raise ConfigError(unknown_name_message("method", method, [*catalog(), *beyond_catalog()], "method")
                          + "; or criterion:<name> for a bare engine criterion (see `prunekit methods`)")
    spec = get_method(method)
    if spec.kind == "unstructured" and target_kind != "sparsity":
        raise ConfigError(f"method={method!r} removes single weights: give target=sparsity=<fraction removed>, "
                          f"not {target_kind}=...")
    if target_kind in LATENCY_KINDS and not hasattr(spec.config, "latency_table"):
        raise ConfigError(f"method={method!r} prices its widths by MACs or params, not by a latency table: give "
                          f"target=macs=<kept>, or one of {', '.join(LATENCY_METHODS)} with options "
                          f"latency_table: PATH")
    if spec.kind == "structured" and target_kind == "sparsity":
        raise ConfigError(f"method={method!r} removes channels: give target=macs=<kept> or params=<kept>, "
                          f"not sparsity=...")
    return spec


def _load_data(recipe: Recipe):
    return data.load(recipe.data, batch_size=recipe.batch_size, subset=recipe.subset, data_dir=recipe.data_dir,
                     seed=recipe.seed, **recipe.data_options)


def _is_path(spec: str) -> bool:
    return spec.endswith((".safetensors", ".json", ".pt")) or os.sep in spec or Path(spec).is_dir()


def resolve_model(spec: str, *, num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> nn.Module:
    """A model from a file written by ``prunekit run``/``prune`` (``pk.save``), a baseline, or a model spec."""
    return _resolve(spec, num_classes=num_classes, in_channels=in_channels, input_size=input_size)[0]


def _resolve(spec: str, *, num_classes: int = 10, in_channels: int = 1,
             input_size: int = 28) -> tuple[nn.Module, dict]:
    """(model, build) where ``build`` = ``{"model", "num_classes", "in_channels", "input_size"}`` rebuilds it."""
    if _is_path(spec):
        path = Path(spec)
        if not path.exists():
            raise ConfigError(f"model={spec!r}: no such file; pass a model file written by `prunekit run`/`prune` "
                              f"(model.safetensors), a baseline name (see baselines/) or a model name such as "
                              f"resnet20")
        if _is_baseline_file(path):
            meta = baselines.baseline_info(str(path))
            return baselines.load_baseline(str(path)), {"model": meta["model"], **meta["build"]}
        build = _build_record(path)

        return load(str(path), lambda: models.create(build["model"], **_build_args(build))), build
    if spec in baselines.list_baselines():
        meta = baselines.baseline_info(spec)
        return baselines.load_baseline(spec), {"model": meta["model"], **meta["build"]}
    build = {"model": spec, "num_classes": num_classes, "in_channels": in_channels, "input_size": input_size}
    return models.create(spec, **_build_args(build)), build


def _build_args(build: dict) -> dict:
    return {k: v for k, v in build.items() if k != "model"}


def _build_record(path: Path) -> dict:
    """The architecture of a saved pruned model: ``model_build`` of the report.json beside it."""
    import json

    report = path.parent / "report.json"
    try:
        build = json.loads(report.read_text())["model_build"]
    except (OSError, ValueError, KeyError):
        raise ConfigError(f"model={str(path)!r}: cannot tell which architecture to rebuild; keep the report.json "
                          f"that `prunekit run`/`prune` wrote beside the model file") from None
    return build


def _is_baseline_file(path: Path) -> bool:
    """True for a baseline: a one-file baseline (record in the header) or weights with a ``.json`` record."""
    if path.suffix == ".safetensors" and read_record(path, "prunekit.baseline") is not None:
        return True
    return _is_baseline_record(path.with_suffix(".json"))


def _is_baseline_record(path: Path) -> bool:
    import json

    try:
        return json.loads(path.read_text()).get("type") == "prunekit.baseline"
    except (ValueError, OSError, AttributeError):
        return False


def _load_baseline(name: str) -> tuple[nn.Module, dict]:
    """(model, build) of the trained baseline ``name`` (store name or file); a missing one says how to make it."""
    if _is_path(name) and Path(name).exists():
        return _resolve(name)
    try:
        meta = baselines.baseline_info(name)
        return baselines.load_baseline(name), {"model": meta["model"], **meta["build"]}
    except ConfigError:
        raise ConfigError(_missing_baseline(name)) from None


def _missing_baseline(name: str) -> str:
    if _is_path(name):
        return (f"baseline={name!r}: no such file; pass a baseline name (see `prunekit train`), a model file, "
                f"or none")
    full = name if "-" in name else f"{name}-fashion-mnist"
    model = full.split("-")[0]
    data = full[len(model) + 1:]
    where = " and ".join(repr(str(d)) for d in baselines.search_path())
    return (f"baseline={name!r} is not there yet (looked in {where}). Make it once with `prunekit train --model "
            f"{model} --data {data}` (writes {full}.safetensors into the baseline store), or pass --baseline none "
            f"to prune an untrained model")


def _baseline_model(name: str) -> str | None:
    """The architecture of baseline ``name`` (from its record), or None when it cannot be told."""
    try:
        if _is_path(name):
            path = Path(name)
            if _is_baseline_file(path):
                return baselines.baseline_info(str(path))["model"]
            return _build_record(path).get("model")
        return baselines.baseline_info(name)["model"]
    except (PrunekitError, OSError, KeyError, TypeError):
        return None


def _baseline_problems(recipe: Recipe) -> list[str]:
    """Why ``recipe.baseline`` cannot be used: missing (with the command that makes it), or another model's."""
    b = recipe.baseline
    if _is_path(b) and not Path(b).exists():
        return [_missing_baseline(b)]
    if not _is_path(b) and b not in baselines.list_baselines() and f"{b}-fashion-mnist" not in \
            baselines.list_baselines():
        return [_missing_baseline(b)]
    arch = _baseline_model(b)
    spec = recipe.model
    if arch is not None and ":" not in spec and not _is_path(spec) and arch != spec:
        return [f"baseline={b!r} is a trained {arch} but model={spec!r}: prunekit never prunes another model "
                f"than the one asked for. Pass --baseline {spec}-{recipe.data} (make it once with `prunekit train "
                f"--model {spec} --data {recipe.data}`), --model {arch}, or --baseline none"]
    return []


def calib_batches(bundle, n_batches: int) -> list:
    """``n_batches`` calibration batches, fewer when the training split is smaller (at least one)."""
    n_train = getattr(bundle.train, "num_samples", None) or len(bundle.train) * bundle.train.batch_size
    bs = bundle.train.batch_size
    if n_train < bs:
        return bundle.calib(1, batch_size=n_train)
    return bundle.calib(max(1, min(n_batches, n_train // bs)))


def _example_inputs(bundle, n: int = 1) -> torch.Tensor:
    x, _ = next(iter(bundle.test))
    return x[:n].clone()


def _measure(model: nn.Module, x: torch.Tensor, latency: bool) -> dict:
    m = measure(model, x)
    out = {"params": int(m.params), "nonzero_params": int(m.nonzero_params),
           "macs": None if m.macs is None else int(m.macs), "size_bytes": int(m.size_dense)}
    if latency:
        out["latency_ms"] = float(time_forward(model, x).median_ms)
    return out


def paired_latency(baseline: nn.Module, pruned: nn.Module, x: torch.Tensor, rounds: int = 3) -> dict:
    """Median batch-1 latency of both models, alternating between them ``rounds`` times.

    Timing the two back to back means both see the same machine load, so their ratio is meaningful on a
    shared machine where absolute times drift.
    """
    import statistics

    base, ours = [], []
    for _ in range(rounds):
        base.append(latency(baseline, x).median_ms)
        ours.append(latency(pruned, x).median_ms)
    return {"latency_base_ms": statistics.median(base), "latency_ms": statistics.median(ours)}


def layer_stats(model: nn.Module) -> dict:
    """``{fqn: {width, params, sparsity}}`` for every conv and linear layer (width = output channels)."""
    stats = {}
    for fqn, mod in model.named_modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            w = mod.weight.detach()
            width = mod.out_channels if isinstance(mod, nn.modules.conv._ConvNd) else mod.out_features
            stats[fqn] = {"width": int(width), "params": int(w.numel()),
                          "sparsity": float((w == 0).sum().item() / max(1, w.numel()))}
    return stats


def _per_layer(before: dict, after: dict) -> dict:
    rows = {}
    for fqn, b in before.items():
        a = after.get(fqn, {"width": 0, "params": 0, "sparsity": 1.0})
        rows[fqn] = {"width_before": b["width"], "width_after": a["width"], "params_before": b["params"],
                     "params_after": a["params"], "sparsity": a["sparsity"]}
    return rows


def _save_model(model: nn.Module, path: Path) -> str:
    """``pk.save`` the model (one safetensors file carrying its shapes); returns the file name."""
    save(model, str(path))
    return path.name


def _evaluate(model, data, device) -> dict:
    return evaluate(model, data, device=device)


def _robust(model, data, attack: dict, recipe: Recipe) -> float:
    """Accuracy on ``data`` under ``attack`` (from :func:`parse_attack`), in the data's pixel space."""
    return robust_accuracy(model, data, device=recipe.device, seed=recipe.seed, **attack)["robust"]


def _train_config(recipe: Recipe, epochs: int, progress: bool, lr: float | None = None):
    return TrainConfig(epochs=epochs, lr=recipe.lr if lr is None else lr, seed=recipe.seed, device=recipe.device,
                       progress=_progress_enabled(progress))


def _history(result) -> list[dict]:
    hist = getattr(result, "history", result)
    if isinstance(hist, dict):  # {"loss": [...], "val_accuracy": [...]} -> rows
        keys = [k for k, v in hist.items() if isinstance(v, list)]
        n = max((len(hist[k]) for k in keys), default=0)
        return [{"epoch": i, **{k: hist[k][i] for k in keys if i < len(hist[k])}} for i in range(n)]
    rename = {"train_loss": "loss", "train_acc": "accuracy", "train_accuracy": "accuracy"}
    return [{rename.get(k, k): v for k, v in dict(h).items()} for h in hist] if isinstance(hist, list) else []


def _keep(keep):
    return list(keep) if isinstance(keep, tuple) else keep


def _apply_pruning(model, x, recipe: Recipe, spec, bundle, progress: bool) -> tuple[list, dict]:
    """Prune ``model`` in place as the recipe says; returns (fine-tune callbacks, method info)."""
    kind, value = parse_target(recipe.target, latency=True)
    if spec is None:
        name = recipe.method[len(CRITERION_PREFIX):]
        if kind == "sparsity":  # the recipe's seed (random scores differ per seed) and calibration when needed
            calib = calib_batches(bundle, recipe.calib_batches) if get_weight_criterion(name).needs_calib else None
            rep = pk.sparsify_(model, sparsity=value, criterion=name, ignore=tuple(recipe.ignore), calib=calib,
                               seed=recipe.seed)
        else:
            calib = calib_batches(bundle, recipe.calib_batches) if get_criterion(name).needs else None
            rep = pk.prune_(model, example_inputs=x, target=recipe.target, criterion=name,
                            ignore=list(recipe.ignore), calib=calib, seed=recipe.seed,
                            keep_outputs=_keep(recipe.keep_outputs))
        return [], {"engine_report": _plain(rep)}

    # the base of a method's own TrainConfig (method_train_config sets its epochs from prune_epochs; 0 is valid
    # for a method that does not train before the cut, and a training method refuses it by name)
    ctx = RunContext(model=model, example_inputs=x, target=recipe.target, train_data=bundle.train,
                     val_data=bundle.val, calib=calib_batches(bundle, recipe.calib_batches),
                     ignore=tuple(recipe.ignore), prune_epochs=recipe.prune_epochs,
                     train_config=_train_config(recipe, max(1, recipe.prune_epochs), progress), device=recipe.device,
                     seed=recipe.seed, options=spec.options(recipe.options), keep_outputs=_keep(recipe.keep_outputs))
    result = spec.run(ctx)
    return list(result.callbacks), {"model": result.model, **dict(result.info), "telemetry": dict(result.telemetry),
                                    "engaged": result.engaged, "warnings": list(result.warnings)}


CUT = "cut"  # the resume folder's checkpoint of the pruned model, written when the method has finished


def _method_phase(model, x, recipe: Recipe, spec, bundle, progress: bool, resume_dir: Path,
                  resume: bool) -> tuple[list, dict]:
    """:func:`_apply_pruning` with checkpoints: its training calls (``fit_checkpoints``) and the cut.

    A resumed run that finds the cut checkpoint skips the method; otherwise each training call of the method
    continues from its checkpoint, or restores its final state when it had finished.
    """
    if resume:
        done = _load_cut(resume_dir / CUT, model)
        if done is not None:
            log.info("--resume: the method had finished; continuing from its pruned model (%s)", resume_dir / CUT)
            return done
    with fit_checkpoints(resume_dir / "method", resume=resume, every=RUN_CHECKPOINT_EVERY) as session:
        callbacks, info = _apply_pruning(model, x, recipe, spec, bundle, progress)
    if session.redone:
        log.info("%s: training call(s) %s keep state that cannot be checkpointed (%s); after an interruption "
                 "--resume trains them again from their start (same result)", recipe.method,
                 [n for n, _ in session.redone], session.redone[0][1])
    if callbacks:
        log.info("%s returns fine-tune callbacks: no checkpoint of the cut; --resume runs the method again, its "
                 "training calls restored from their checkpoints", recipe.method)
    else:
        _save_cut(resume_dir / CUT, info.get("model", model), info)
    return callbacks, info


def _save_cut(folder: Path, model: nn.Module, info: dict) -> None:
    """Pruned model (``pk.save``), masks and buffers, RNG states and the method's info; ``cut.json`` last."""
    import json

    try:
        record = json.dumps({k: v for k, v in info.items() if k != "model"}, allow_nan=True)
    except (TypeError, ValueError) as e:
        log.info("no checkpoint of the cut: the method's info is not JSON (%s); --resume runs the method again", e)
        return
    _save_saved(model, folder / "model.safetensors")
    buffers, modes = extra_buffers(model)
    rng_t, rng_j = _rng_states()
    data = tensors_to_bytes({**buffers, **rng_t})
    atomic_write_bytes(folder / "state.safetensors", data)
    atomic_write_bytes(folder / "cut.json", json.dumps(
        {"info": json.loads(record), "masks": modes, "rng": rng_j, "sha256": sha256_bytes(data),
         "same_object": info.get("model", model) is model}).encode())


def _load_cut(folder: Path, model: nn.Module) -> tuple[list, dict] | None:
    """The (callbacks, info) of a finished method from its cut checkpoint, the model set to the pruned one."""
    import json

    try:
        index = json.loads((folder / "cut.json").read_text())
    except (OSError, ValueError):
        return None
    try:
        tensors = read_verified_tensors(folder / "state.safetensors", index["sha256"])
        pruned = _load_saved(folder / "model.safetensors", lambda: model if index["same_object"] else
                             copy.deepcopy(model))
        sync_masks(pruned, index["masks"], tensors)
        restore_extra_buffers(pruned, tensors, str(folder))
    except (PrunekitError, KeyError, RuntimeError, ValueError) as e:
        log.warning("--resume: the cut checkpoint in %s cannot be used (%s); running the method again", folder, e)
        return None
    set_rng_states(tensors, index["rng"])
    return [], {"model": pruned, **index["info"]}


def _finalize_masks(model: nn.Module) -> bool:
    """Make any masks permanent (a plain model with the dense keys); True when there were masks."""
    if not get_masks(model):
        return False
    finalize_(model)
    return True


def _plain(obj):
    """A JSON-friendly view of an engine report."""
    for attr in ("to_dict", "as_dict"):
        if hasattr(obj, attr):
            try:
                return getattr(obj, attr)()
            except Exception:  # noqa: BLE001 - a report we cannot serialise is summarised below
                break
    return str(obj)[:2000]


# --- run ---------------------------------------------------------------------------------------------------
def _validate_run(recipe: Recipe, kind: str, force: bool = False):
    """Check out folder, data set, model, method and baseline; raise one error listing every problem."""
    problems, spec = [], None
    checks = [lambda: _check_out_free(recipe.out, force), lambda: _check_data_name(recipe.data),
              lambda: _check_model_name(recipe.model)]
    for check in checks:
        try:
            check()
        except ConfigError as exc:
            problems.append(str(exc))
    try:
        spec = _check_method(recipe.method, kind)
    except ConfigError as exc:
        problems.append(str(exc))
    if recipe.baseline is not None:
        problems += _baseline_problems(recipe)
    if problems:
        raise ConfigError("; ".join(problems) if len(problems) == 1 else
                          f"{len(problems)} problems:\n  " + "\n  ".join(problems))
    return spec


def run_job(recipe: Recipe, *, progress: bool = True, note: str = "", force: bool = False,
            resume: bool = False, robust: str | None = None) -> dict:
    """The main job: baseline → prune to the target → BN recalibration → fine-tune → evaluate → report.

    Writes ``report.json``, ``report.md``, plots, ``recipe.yaml`` and ``model.safetensors`` (``pk.save``) into
    ``recipe.out`` and returns the report dict (with ``out`` added). ``recipe.out`` must be new, empty or a
    previous run, unless ``force`` (see :func:`_staged_output`). Every phase writes checkpoints into a hidden
    folder beside ``recipe.out`` (see :func:`_resume_dir`): each training call of the method, the pruned model
    after the cut, the fine-tune. After an interruption ``resume=True`` (``prunekit run ... --resume``) redoes
    the deterministic steps (load, evaluate) and continues from the last checkpoint, giving the weights of an
    uninterrupted run. The folder is deleted when the run succeeds. ``robust`` (``--robust pgd:eps=0.1,steps=10``,
    see :func:`prunekit.train.adversarial.parse_attack`) adds the accuracy under that attack on the test set as
    ``robust_accuracy`` to ``before`` and ``after`` and the attack as ``report["robust"]``.
    """
    t_start = time.perf_counter()
    attack = parse_attack(robust) if robust is not None else None
    kind, _ = parse_target(recipe.target, latency=True)
    spec = _validate_run(recipe, kind, force)
    resume_dir = _prepare_resume(recipe, resume)
    torch.manual_seed(recipe.seed)
    timings = {}
    t = time.perf_counter()
    model, build = (None, None) if recipe.baseline is None else _load_baseline(recipe.baseline)
    bundle = _load_data(recipe)
    if model is None:
        build = {"model": recipe.model, "num_classes": bundle.num_classes, "in_channels": bundle.in_channels,
                 "input_size": bundle.input_size}
        model = pk.models.create(recipe.model, **_build_args(build))
    model = model.to(recipe.device).eval()
    x = _example_inputs(bundle).to(recipe.device)
    timings["load"] = time.perf_counter() - t

    t = time.perf_counter()
    before = {**_evaluate(model, bundle.test, recipe.device), **_measure(model, x, False)}
    if attack is not None:
        before["robust_accuracy"] = _robust(model, bundle.test, attack, recipe)
    layers_before = layer_stats(model)
    original = copy.deepcopy(model) if recipe.latency else None
    timings["evaluate before"] = time.perf_counter() - t

    t = time.perf_counter()
    callbacks, info = _method_phase(model, x, recipe, spec, bundle, progress, resume_dir, resume)
    model = info.pop("model", model)
    timings["prune"] = time.perf_counter() - t
    stages, stages_ppl = {"baseline": before["accuracy"]}, {}
    if "perplexity" in before:  # language models: the perplexity of each stage too
        stages_ppl["baseline"] = before["perplexity"]

    def stage(name):
        res = _evaluate(model, bundle.test, recipe.device)
        stages[name] = res["accuracy"]
        if "perplexity" in res:
            stages_ppl[name] = res["perplexity"]

    stage("after prune")
    if recipe.calib_batches > 0 and kind != "sparsity":
        if recalibrate_bn(model, calib_batches(bundle, recipe.calib_batches), recipe.device):
            stage("after BN recalibration")

    t = time.perf_counter()
    history = []
    if recipe.finetune_epochs > 0:
        cfg = _train_config(recipe, recipe.finetune_epochs, progress).replace(
            checkpoint_dir=str(resume_dir / "finetune"), checkpoint_every=RUN_CHECKPOINT_EVERY, resume=resume)
        result = fit(model, bundle.train, cfg, callbacks=callbacks, val_data=bundle.val)
        history = _history(result)
    timings["fine-tune"] = time.perf_counter() - t
    _finalize_masks(model)
    model.eval()
    after = {**_evaluate(model, bundle.test, recipe.device), **_measure(model, x, False)}
    if attack is not None:
        after["robust_accuracy"] = _robust(model, bundle.test, attack, recipe)
    if original is not None:  # both timed back to back, at the end, under the same load
        lat = paired_latency(original, model, x)
        before["latency_ms"], after["latency_ms"] = lat["latency_base_ms"], lat["latency_ms"]
    stages["after fine-tune"] = after["accuracy"]
    if "perplexity" in after:
        stages_ppl["after fine-tune"] = after["perplexity"]
    timings["total"] = time.perf_counter() - t_start

    method = {"id": recipe.method, "via": "criterion" if spec is None else "method",
              "status": None if spec is None else spec.status, "telemetry": info.pop("telemetry", {}),
              "engaged": info.pop("engaged", None), "warnings": info.pop("warnings", []), "info": info}
    if note:
        method["note"] = note
    data_info = {"train_images": int(getattr(bundle.train, "num_samples", 0)),
                 "test_images": int(getattr(bundle.test, "num_samples", 0)), "num_classes": bundle.num_classes}
    report = {"type": "prunekit.RunReport", "version": 1, "recipe": recipe.to_dict(), "method": method,
              "data": data_info, "model_build": build,
              "before": before, "after": after, "stages": stages,
              "ratios": {"params_kept": after["params"] / before["params"],
                         "macs_kept": after["macs"] / before["macs"] if before["macs"] else None},
              "per_layer": _per_layer(layers_before, layer_stats(model)), "history": history, "timings": timings}
    if attack is not None:
        report["robust"] = {**attack, "spec": robust}
    if stages_ppl:
        report["stages_perplexity"] = stages_ppl

    with _staged_output(recipe.out, force=force) as stage:
        files = {"model": _save_model(model, stage / "model.safetensors"), "recipe": "recipe.yaml"}
        recipe.save(stage / "recipe.yaml")
        write_run_report({**report, "files": files}, stage)
    shutil.rmtree(resume_dir, ignore_errors=True)
    return {**report, "out": str(recipe.out)}


# --- train / eval ------------------------------------------------------------------------------------------
def train_job(model: str = "resnet20", data: str = "fashion-mnist", *, progress: bool = True, **options) -> dict:
    """Train a dense baseline with :func:`prunekit.train.baseline.train_baseline`; returns its record."""
    _check_data_name(data)
    _check_model_name(model)
    for key, flag, example in (("model_option", "--model-option", "d_model=128"),
                               ("data_option", "--data-option", "seq_len=128")):
        items = options.pop(key, None)
        if items:
            options[f"{key}s"] = parse_key_values(items, flag, example)
    options = {k: v for k, v in options.items() if v is not None}
    return baselines.train_baseline(model, data, progress=_progress_enabled(progress), **options)


def eval_job(model: str, data: str = "fashion-mnist", *, batch_size: int = 256, data_dir: str | None = None,
             device: str = "cpu", subset: int | None = None, latency: bool = True) -> dict:
    """Test accuracy, params, MACs and latency of a saved model, a baseline or a model spec."""
    _check_data_name(data)
    bundle = pk_data.load(data, batch_size=batch_size, subset=subset, data_dir=data_dir)
    net = resolve_model(model, num_classes=bundle.num_classes, in_channels=bundle.in_channels,
                        input_size=bundle.input_size).to(device).eval()
    x = _example_inputs(bundle).to(device)
    return {"model": model, "data": data, **_evaluate(net, bundle.test, device), **_measure(net, x, latency)}


# --- prune / inspect ---------------------------------------------------------------------------------------
def _check_writable(path: Path, argument: str) -> None:
    """ConfigError unless a file can be created at ``path`` (its folder is made if missing; probed with a
    temporary file that is removed at once, since permission bits do not tell for root or read-only mounts)."""
    import tempfile

    why = "it is a folder" if path.is_dir() else None
    if why is None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.probe-"):
                pass
        except OSError as exc:
            why = f"{str(path.parent)!r} is not a writable folder ({exc.strerror or type(exc).__name__})"
    if why:
        raise ConfigError(f"{argument}={str(path)!r} cannot be written: {why}; choose a path in a folder you can "
                          f"write, e.g. --{argument} ./model.onnx")


def _onnx_opsets() -> tuple[int, int]:
    """The opsets ``torch.onnx.export(..., dynamo=False)`` accepts."""
    try:
        from torch.onnx import _constants as c

        return c.ONNX_MIN_OPSET, getattr(c, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", c.ONNX_MAX_OPSET)
    except (ImportError, AttributeError):
        return 7, 17


def _example_for(model_spec: str, input_shape: tuple[int, ...] | None) -> torch.Tensor:
    shape = tuple(input_shape) if input_shape else (1, 1, 28, 28)
    if len(shape) < 2 or any(int(s) < 1 for s in shape):
        raise ConfigError(f"input_shape={shape!r} must be a batch shape like 1,3,32,32")
    return torch.randn(*shape)


def prune_job(model: str, target: str, out: str, *, criterion: str = "l1", ignore: tuple[str, ...] = (),
              input_shape: tuple[int, ...] | None = None, num_classes: int = 10, force: bool = False,
              keep_outputs="all") -> dict:
    """One-shot pruning of a saved model or a spec (no data needed): structural (macs=/params=) or masks (sparsity=).

    Writes ``model.safetensors`` and ``report.json`` into ``out``.
    """
    kind, value = parse_target(target)
    _check_out_free(out, force)
    x = _example_for(model, input_shape)
    if kind != "sparsity":
        CRITERIA.get(criterion, argument="criterion")
    _check_model_name(model)
    net, build = _resolve(model, num_classes=num_classes, in_channels=x.shape[1], input_size=x.shape[-1])
    net.eval()
    before = {**_measure(net, x, False), "layers": layer_stats(net)}
    if kind == "sparsity":
        rep = pk.sparsify_(net, sparsity=value, criterion=criterion, ignore=tuple(ignore))
        pk.finalize_(net)
    else:
        rep = pk.prune_(net, example_inputs=x, target=target, criterion=criterion, ignore=list(ignore),
                        keep_outputs=keep_outputs)
    after = {**_measure(net, x, False), "layers": layer_stats(net)}
    report = {"type": "prunekit.PruneReport", "version": 1, "model": model, "model_build": build, "target": target,
              "criterion": criterion, "ignore": list(ignore), "input_shape": list(x.shape),
              "before": {k: v for k, v in before.items() if k != "layers"},
              "after": {k: v for k, v in after.items() if k != "layers"},
              "per_layer": _per_layer(before["layers"], after["layers"]), "engine_report": _plain(rep)}
    with _staged_output(out, force=force) as stage:
        report["files"] = {"model": _save_model(net, stage / "model.safetensors")}
        write_json(report, stage / "report.json")
    return {**report, "out": str(out)}


def inspect_job(model: str, *, input_shape: tuple[int, ...] | None = None, num_classes: int = 10,
                keep_outputs="all") -> dict:
    """Prunable groups and layer widths of a model (nothing is changed)."""
    x = _example_for(model, input_shape)
    _check_model_name(model)
    net = resolve_model(model, num_classes=num_classes, in_channels=x.shape[1], input_size=x.shape[-1]).eval()
    found = pk.inspect(net, x, keep_outputs=keep_outputs)
    groups = [{"id": g.id, "name": g.name, "width": g.width, "approximate": bool(g.approximate),
               "members": [f"{m.fqn}[{m.dim}]" for m in g.members]} for g in getattr(found, "groups", [])]
    return {"model": model, "input_shape": list(x.shape), **_measure(net, x, False), "layers": layer_stats(net),
            "groups": groups, "inspect": str(found)}


# --- bench / export ----------------------------------------------------------------------------------------
def export_onnx(model: str, out: str, *, input_shape: tuple[int, ...] | None = None, opset: int = 17,
                atol: float = 1e-4) -> dict:
    """Export a model to ONNX and check onnxruntime gives the same outputs (max abs diff <= ``atol``)."""
    import numpy as np

    x = _example_for(model, input_shape)
    out_path = Path(out)
    if out_path.suffix != ".onnx":
        raise ConfigError(f"onnx={out!r} must end in .onnx, e.g. --onnx model.onnx")
    lo, hi = _onnx_opsets()
    if isinstance(opset, bool) or not isinstance(opset, int) or not lo <= opset <= hi:
        raise ConfigError(f"opset={opset!r} is not supported by this torch's ONNX exporter (opsets {lo}..{hi}); "
                          f"use --opset 17 (the default)")
    if _is_path(model) and not Path(model).exists():
        raise ConfigError(f"model={model!r}: no such file; pass a model file written by `prunekit run`/`prune` "
                          f"(model.safetensors), a baseline name or a model name such as lenet5")
    _check_writable(out_path, "onnx")
    _check_model_name(model)
    net = resolve_model(model, in_channels=x.shape[1], input_size=x.shape[-1]).eval()
    import onnxruntime as ort

    # a temporary file beside the target (removed on any exit; one left by SIGKILL by the next export), fsynced,
    # then renamed over the target: the file is the old one or the complete, checked new one
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{_TMP_SUFFIX}")
    with _signals_unwind():
        try:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            _sweep_stale(out_path)
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except OSError as e:
            raise ConfigError(f"onnx={out!r}: cannot write there ({e.strerror}); choose a writable path") from None
        try:
            torch.onnx.export(net, (x,), str(tmp), input_names=["input"], output_names=["output"],
                              opset_version=opset, dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                              dynamo=False)
            sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            probe = torch.randn(3, *x.shape[1:])
            with torch.no_grad():
                ref = net(probe).numpy()
            got = sess.run(None, {"input": probe.numpy()})[0]
            diff = float(np.abs(ref - got).max())
            if diff > atol:
                raise ConfigError(f"onnxruntime output differs from torch by {diff:.2e} > atol={atol}; "
                                  f"the export is not faithful, nothing was written")
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, out_path)
        finally:
            if tmp.exists():
                tmp.unlink()
    return {"model": model, "onnx": str(out_path), "max_abs_diff": diff, "opset": opset,
            "bytes": out_path.stat().st_size}


# --- search ---------------------------------------------------------------------------------------------------
def _search_latency(found) -> dict:
    """Predicted and measured latency (ms, the table's timing setup) of the dense model and the chosen one."""
    lat, widths = found.latency, tuple(found.widths.values())
    dense_ms, chosen_ms = lat.measured_ms(widths, rounds=1)
    how = lat.table.timing()
    return {"latency": {"dense_predicted_ms": lat.dense_ms, "chosen_predicted_ms": lat.predict_ms(widths),
                        "dense_measured_ms": dense_ms, "chosen_measured_ms": chosen_ms,
                        "measured_fraction": chosen_ms / dense_ms, "threads": how["threads"],
                        "backend": how.get("backend", "torch"), "clock": how.get("clock", "wall"),
                        "statistic": how.get("statistic", "median")}}


def search_job(*, baseline: str = "resnet20-fashion-mnist", data_name: str = "fashion-mnist",
               target: str = "macs=0.5", candidates: int = 30, seconds: float | None = None,
               max_ratio: float | None = None, window: float = 0.005, recal_batches: int = 20,
               val_images: int = 1000, criterion: str = "l1", batch_size: int = 128, subset: int | None = None,
               seed: int = 0, device: str = "cpu", ignore=(), out: str = "runs/search", force: bool = False,
               resume: bool = False, progress: bool = True, data_dir: str | None = None,
               latency_table: str | None = None, latency_backend: str | None = None,
               latency_clock: str | None = None, latency_statistic: str | None = None,
               latency_checks: int = 2, executor: str = "local", address: str | None = None,
               workers: int = 2) -> dict:
    """``prunekit search``: widths for ``target`` from ``candidates`` scored sub-networks of a trained baseline.

    A ``latency=F`` (or ``latency=Xms``) target prices candidates by a per-layer latency table measured on this
    machine at ``latency_table`` (measured there on first use, reused after) with ``latency_backend``
    (``"torch"`` or ``"onnxruntime"``), ``latency_clock`` (``"wall"`` or ``"cpu"``) and ``latency_statistic``
    (``"median"`` or ``"p10"``) (None: an existing table's, else torch / wall / median); the report then holds the
    predicted and the measured latency of the dense and the chosen model, timed on that backend.
    ``executor="ray"`` scores the candidates as Ray tasks (``workers`` at once; ``address``: a running cluster).

    Writes ``report.json``, ``report.md``, ``search.png`` (every candidate's cost and score; the chosen widths
    beside the uniform ones), ``record.json`` (every candidate) and ``model.safetensors`` (the baseline cut to
    the chosen widths, BatchNorm recalibrated, not fine-tuned) into ``out``. The record is written after every
    candidate into a hidden folder beside ``out``; ``resume=True`` continues an interrupted search from it.
    """
    _check_out_free(out, force=force)
    if parse_target(target, latency=True)[0] in LATENCY_KINDS and latency_table is None:
        raise ConfigError(f"target={target!r} prices candidates by a per-layer latency table measured on this "
                          f"machine: give its file with --latency-table PATH (latency_table=; measured there on "
                          f"first use, reused after), or a macs=/params= target")
    resume_dir = _resume_dir(out)
    record = resume_dir / "search-record.json"
    if not resume and record.exists():
        record.unlink()
    model, build = _load_baseline(baseline)
    model = model.to(device).eval()
    bundle = data.load(data_name, batch_size=batch_size, subset=subset, data_dir=data_dir, seed=seed)
    if bundle.val is None:
        raise ConfigError(f"data={data_name!r} has no validation split to score candidates on; a search never "
                          f"scores on the test split")
    x = _example_inputs(bundle).to(device)
    val = first_examples(bundle.val, val_images)
    dense_score = evaluate(model, val, device=device)["accuracy"]
    dense_test = evaluate(model, bundle.test, device=device)["accuracy"]
    resume_dir.mkdir(parents=True, exist_ok=True)
    with ProgressBar(candidates if seconds is None else 0, enabled=progress, every=1, label="search",
                     field="score") as bar:
        found = search(model, x, target, train=bundle.train, val=val, candidates=candidates, seconds=seconds,
                       max_ratio=max_ratio, window=window, recal_batches=recal_batches, criterion=criterion,
                       ignore=tuple(ignore), seed=seed, device=device, record=str(record),
                       on_trial=lambda t: bar.advance(t.score), latency_table=latency_table,
                       latency_backend=latency_backend, latency_clock=latency_clock,
                       latency_statistic=latency_statistic, latency_checks=latency_checks, executor=executor,
                       address=address, workers=workers)
    subnets = found.subnets
    uniform = tuple(found.uniform_widths.values())
    latency = _search_latency(found) if found.latency is not None else {}
    prune_(model, found.plan)
    if recal_batches:
        recalibrate_bn(model, first_batches(bundle.train, recal_batches), device)
    report = {"type": "prunekit.SearchReport", "version": 1, "model": build.get("model") if build else baseline,
              "data": data_name, "baseline": baseline, "sampler": "random", "window": window,
              "recal_batches": recal_batches, "val_images": len(val) and sum(len(b[0]) for b in val),
              "dense_score": dense_score, "dense_test_accuracy": dense_test,
              "pruned_test_accuracy": evaluate(model, bundle.test, device=device)["accuracy"],
              "uniform_cost": found.cost(uniform), **found.as_dict(), "kind": found.kind, **latency}
    with _staged_output(out, force=force) as stage:
        files = {"model": _save_model(model, stage / "model.safetensors"), "record": "record.json"}
        found.record.save(stage / "record.json")
        write_search_report({**report, "files": files}, stage)
    shutil.rmtree(resume_dir, ignore_errors=True)
    return {**report, "out": str(out)}
