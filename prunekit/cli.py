"""The ``prunekit`` command. Parsing and printing only: each subcommand calls one verb of :mod:`prunekit.workflows`."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from ._registry import closest
from .errors import ConfigError, PrunekitError

EXIT_ERROR = 2


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.replace("x", ",").split(",") if s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"input shape {text!r} must look like 1,3,32,32") from None


def _output_key(text: str):
    """A model output's name, or its index in a tuple return."""
    return int(text) if text.lstrip("-").isdigit() else text


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "all", "null") else int(text)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prunekit", description="Prune neural networks and measure what you get.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", help="the main job: prune a trained model, fine-tune, report (no flags: the default)",
                       argument_default=argparse.SUPPRESS)
    r.add_argument("--recipe", help="YAML/JSON recipe; flags override its keys")
    r.add_argument("--model", help="model spec, e.g. resnet20, lenet5 (default resnet20)")
    r.add_argument("--data", help="data set, e.g. fashion-mnist")
    r.add_argument("--baseline", help="trained baseline name or model file; 'none' prunes an untrained model")
    r.add_argument("--method", help="method id (see `prunekit methods`) or criterion:<name>, e.g. criterion:l2")
    r.add_argument("--target", help="macs=0.5 / params=0.25 (fraction kept) or sparsity=0.9 (fraction removed)")
    r.add_argument("--finetune-epochs", type=int)
    r.add_argument("--prune-epochs", type=int, help="epochs a training-time method may use before the cut")
    r.add_argument("--lr", type=float, help="fine-tuning learning rate")
    r.add_argument("--batch-size", type=int)
    r.add_argument("--subset", type=_optional_int, help="training images used ('all' for every image)")
    r.add_argument("--seed", type=int)
    r.add_argument("--out", help="output folder (default runs/default)")
    r.add_argument("--device", help="cpu | cuda | mps")
    r.add_argument("--calib-batches", type=int, help="batches for BN recalibration (0 = none)")
    r.add_argument("--ignore", nargs="*", help="module paths never pruned, e.g. fc conv1")
    r.add_argument("--keep-outputs", nargs="+", type=_output_key, metavar="OUTPUT",
                   help="outputs whose shape must not change (method criterion:<name> only; default all)")
    r.add_argument("--data-dir", help="folder holding the data set files")
    r.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    r.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="method option (repeatable); the value is parsed as YAML")
    r.add_argument("--force", action="store_true",
                   help="replace an --out folder that holds other files (they are deleted)")
    r.add_argument("--resume", action="store_true",
                   help="continue the interrupted run of the same command from its last checkpoint (the method's training, the cut or the fine-tune)")
    r.add_argument("--robust", metavar="ATTACK",
                   help="also report accuracy under an attack, e.g. pgd:eps=0.1,steps=10 (alpha=... optional) or "
                        "fgsm:eps=0.1 (eps in pixel units)")

    t = sub.add_parser("train", help="train a dense baseline (written to baselines/<model>-<data>.safetensors)")
    t.add_argument("--model", default="resnet20")
    t.add_argument("--data", default="fashion-mnist")
    t.add_argument("--epochs", type=int)
    t.add_argument("--out", help="baseline file (.safetensors); default baselines/<model>-<data>.safetensors")
    t.add_argument("--lr", type=float)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--optimizer")
    t.add_argument("--scheduler")
    t.add_argument("--label-smoothing", type=float)
    t.add_argument("--augment")
    t.add_argument("--seed", type=int)
    t.add_argument("--subset", type=_optional_int)
    t.add_argument("--data-dir")
    t.add_argument("--device")
    t.add_argument("--warmup-steps", type=int, help="optimizer steps of linear learning-rate warm-up")
    t.add_argument("--grad-clip-norm", type=float, help="clip the gradients' global L2 norm (0: no clipping)")
    t.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="model build option, e.g. --model-option d_model=128 (repeatable; recorded)")
    t.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                   help="data set option, e.g. --data-option seq_len=128 (repeatable; recorded)")
    t.add_argument("--checkpoint-dir", help="makes training resumable: rerun the same command after a kill")
    t.add_argument("--force", action="store_true", help="replace an existing baseline of the same name")

    e = sub.add_parser("eval", help="test accuracy, params, MACs and latency of a model")
    e.add_argument("--model", required=True, help="model file, baseline name or model spec")
    e.add_argument("--data", default="fashion-mnist")
    e.add_argument("--data-dir")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--device", default="cpu")

    pr = sub.add_parser("prune", help="one-shot pruning of a saved model or spec, no data needed")
    pr.add_argument("--model", required=True, help="model file, baseline name or model spec")
    pr.add_argument("--target", required=True, help="macs=0.5 / params=0.5 / sparsity=0.9")
    pr.add_argument("--criterion", default=None,
                    help="channel criterion for macs=/params= (default l2, as pk.plan; l1/l2/fpgm score the "
                         "producing filters) or weight criterion for sparsity= (default magnitude, as pk.sparsify_)")
    pr.add_argument("--ignore", nargs="*", default=[])
    pr.add_argument("--keep-outputs", nargs="+", type=_output_key, default=None, metavar="OUTPUT",
                    help="outputs whose shape must not change (names of a dict/ModelOutput return, indices of a "
                         "tuple); the others may narrow. Default: all")
    pr.add_argument("--input-shape", type=_shape, help="example input shape, default 1,1,28,28")
    pr.add_argument("--num-classes", type=int, default=10)
    pr.add_argument("--out", required=True, help="output folder")
    pr.add_argument("--force", action="store_true",
                    help="replace an --out folder that holds other files (they are deleted)")

    se = sub.add_parser("search", help="search per-layer widths for a target by scoring sub-networks "
                                       "(EagleEye's random strategies, adaptive-BN accuracy)")
    se.add_argument("--baseline", default="resnet20-fashion-mnist", help="trained baseline name or model file")
    se.add_argument("--data", default="fashion-mnist", help="data set (candidates are scored on its validation "
                                                            "split, held out of the training images)")
    se.add_argument("--target", default="macs=0.5", help="macs=0.5 / params=0.5 (fraction kept); latency=0.5 "
                                                          "or latency=3ms with --latency-table")
    se.add_argument("--latency-table", help="for a latency= target: the per-layer latency table's file (measured "
                                            "on this machine on first use, reused after)")
    se.add_argument("--executor", default="local", choices=["local", "ray"],
                    help="where candidates are scored: here, or as Ray tasks (pip install 'prunekit[ray]'); the "
                         "same candidates and scores either way")
    se.add_argument("--address", help="with --executor ray: the running cluster's head, host:port (default: a "
                                      "local Ray instance of --workers CPUs)")
    se.add_argument("--workers", type=int, default=2, help="with --executor ray: candidates scored at once")
    se.add_argument("--latency-checks", type=int, default=2,
                    help="rounds of timing the chosen candidate against the dense model and, on a miss, choosing "
                         "again under a limit lowered by the miss (default 2; 0 trusts the table)")
    se.add_argument("--latency-backend", choices=["torch", "onnxruntime"],
                    help="what the latency table times: eager PyTorch or onnxruntime (default: an existing "
                         "table's backend, else torch)")
    se.add_argument("--latency-clock", choices=["wall", "cpu"],
                    help="what the latency table reads: elapsed time, or the timing thread's CPU time (steady "
                         "when other processes share the cores; default: an existing table's, else wall)")
    se.add_argument("--latency-statistic", choices=["median", "p10"],
                    help="the latency table's figure per layer: the median of its timed runs, or their 10th "
                         "percentile (default: an existing table's, else median)")
    se.add_argument("--candidates", type=int, default=30, help="sub-networks scored (default 30)")
    se.add_argument("--seconds", type=float, help="wall-time budget instead of --candidates")
    se.add_argument("--max-ratio", type=float, help="largest per-layer pruning ratio drawn (default: EagleEye's R "
                                                     "for the target: 0.4 / 0.7 / 0.8 at 25/50/75%% fewer MACs)")
    se.add_argument("--window", type=float, default=0.005, help="candidates land at most this far below the target")
    se.add_argument("--recal-batches", type=int, default=20, help="training batches re-estimating BatchNorm per "
                                                                   "candidate (0: the stale statistics)")
    se.add_argument("--val-images", type=int, default=1000, help="held-out training images each candidate is "
                                                                  "scored on")
    se.add_argument("--criterion", default="l1", choices=["l1", "l2"], help="filter criterion inside a layer")
    se.add_argument("--batch-size", type=int, default=128)
    se.add_argument("--subset", type=_optional_int, help="training images used ('all' for every image)")
    se.add_argument("--seed", type=int, default=0)
    se.add_argument("--device", default="cpu")
    se.add_argument("--ignore", nargs="*", default=[], help="module paths never pruned")
    se.add_argument("--data-dir", help="folder holding the data set files")
    se.add_argument("--out", default="runs/search", help="output folder (default runs/search)")
    se.add_argument("--force", action="store_true",
                    help="replace an --out folder that holds other files (they are deleted)")
    se.add_argument("--resume", action="store_true", help="continue an interrupted search of the same --out")

    i = sub.add_parser("inspect", help="prunable groups and widths of a model")
    i.add_argument("--model", required=True)
    i.add_argument("--input-shape", type=_shape)
    i.add_argument("--num-classes", type=int, default=10)
    i.add_argument("--keep-outputs", nargs="+", type=_output_key, default=None, metavar="OUTPUT",
                   help="outputs whose shape must not change (default: all)")
    i.add_argument("--json", action="store_true")

    b = sub.add_parser("bench", help="run or continue a benchmark grid (methods × targets × seeds)")
    b.add_argument("grid", help="grid YAML, e.g. benchmarks/recipes/filter_grid.yaml")
    b.add_argument("--out", help="results prefix (default: the grid's `out`)")
    b.add_argument("--fresh", action="store_true", help="ignore finished cells and start over")
    b.add_argument("--limit", type=int, help="run at most this many new cells, then write the report")
    b.add_argument("--reverse", action="store_true",
                   help="work from the last cell backwards (a second process on the same grid)")
    b.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads for this process (default 1: with several workers on a few "
                        "cores, more threads oversubscribe the CPU and every worker slows down)")
    b.add_argument("--workers", type=int, default=1,
                   help="worker processes sharing the grid (each claims cells; e.g. one per core, or several "
                        "per GPU for small models)")
    b.add_argument("--keep-going", action="store_true",
                   help="record a cell that raises (<cell>.failed.json) and go on (the default with --workers "
                        "and --executor ray)")
    b.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="where cells run: this machine (local; --workers processes) or Ray tasks, one CPU each "
                        "(a local Ray instance of --workers CPUs, or the cluster at --address); needs "
                        "pip install 'prunekit[ray]'")
    b.add_argument("--address", help="with --executor ray: the running cluster's head, host:port")
    b.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                   help="run only these of the grid's seeds (e.g. --seeds 0: one complete table, controls "
                        "included, first); a later run without it reuses the cells")

    m = sub.add_parser("methods", help="the catalogue of papers and the status of each implementation")
    m.add_argument("--json", action="store_true")
    m.add_argument("--status", help="implemented | partial | not-meaningful | not-yet")

    x = sub.add_parser("export", help="export a model to ONNX and check onnxruntime equivalence")
    x.add_argument("--model", required=True)
    x.add_argument("--onnx", required=True, help="output .onnx path")
    x.add_argument("--input-shape", type=_shape)
    x.add_argument("--opset", type=int, default=17)
    for cmd in (r, t, e, pr, i, b, x):
        cmd.add_argument("--baselines", metavar="DIR", default=argparse.SUPPRESS,
                         help="baseline store (default $PRUNEKIT_BASELINES or the user cache, "
                              "~/.cache/prunekit/baselines); the shipped baselines are searched after it")
    return p


def _console(min_width: int = 0):
    from rich.console import Console

    console = Console()
    if min_width and console.width < min_width:
        console = Console(width=min_width)
    return console


def _table(title, header, rows):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for h in header:
        table.add_column(h, overflow="fold")
    for row in rows:
        table.add_row(*(str(c) for c in row))
    return table


# flags of `run` that are not recipe keys: they steer the command, not the job
_NOT_RECIPE_FLAGS = ("command", "verbose", "recipe", "option", "no_latency", "force", "baselines", "resume",
                     "robust")


def _cmd_run(args) -> int:
    from . import workflows as W

    flags = {k: v for k, v in vars(args).items() if k not in _NOT_RECIPE_FLAGS}
    if getattr(args, "no_latency", False):
        flags["latency"] = False
    recipe, note = W.resolve_recipe(getattr(args, "recipe", None), flags, getattr(args, "option", None) or [])
    report = W.run_job(recipe, note=note, force=getattr(args, "force", False), resume=getattr(args, "resume", False),
                       robust=getattr(args, "robust", None))
    console = _console()
    from .report import summary_rows

    console.print(_table(f"prunekit run — {recipe.model} / {recipe.data} — {recipe.method} → {recipe.target}",
                         ("", "before", "after", "change"), summary_rows(report)))
    if note:
        console.print(f"[yellow]note:[/] {note}")
    method = report.get("method") or {}
    if method.get("telemetry"):
        state = {True: "engaged", False: "did not engage"}.get(method.get("engaged"), "not checked")
        from .report.run import format_value

        rows = [(k, format_value(v)) for k, v in method["telemetry"].items()]
        console.print(_table(f"mechanism of {recipe.method}: {state}", ("figure", "value"), rows))
    for w in method.get("warnings") or []:
        console.print(f"[yellow]warning:[/] {w}")
    console.print(f"report: {report['out']}/report.md")
    return 0


def _cmd_methods(args) -> int:
    from .workflows import methods_table

    rows = methods_table(status=args.status)
    extra = methods_table(status=args.status, beyond=True)
    if args.json:
        print(json.dumps(rows + extra, indent=2))
        return 0
    columns = ("id", "title", "venue", "year", "type", "status", "left out")
    for section, beyond in (("papers of the list", False), ("beyond the list", True)):
        shown = extra if beyond else rows
        if beyond and not shown:
            continue
        counts = {}
        for row in methods_table(beyond=beyond):
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        title = f"{len(shown)} {section} · " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        _console(150).print(_table(title, columns, [(r["id"], r["title"], r["venue"], r["year"], r["type"],
                                                     r["status"], r["left_out"]) for r in shown]))
    return 0


def _print_json(obj) -> int:
    print(json.dumps(obj, indent=2, default=str))
    return 0


def _cmd_train(args) -> int:
    from .workflows import train_job

    opts = {k: v for k, v in vars(args).items() if k not in ("command", "verbose", "model", "data", "baselines")}
    rec = train_job(args.model, args.data, **opts)
    score = (f"test perplexity {rec['test_perplexity']:.2f}" if "test_perplexity" in rec
             else f"test accuracy {100 * rec['test_accuracy']:.2f}%")
    print(f"baseline {rec['model']}-{rec['data']}: {score} ({rec['params']} params); reproduce with: {rec['command']}")
    return 0


def _cmd_eval(args) -> int:
    from .workflows import eval_job

    return _print_json(eval_job(args.model, args.data, batch_size=args.batch_size, data_dir=args.data_dir,
                                device=args.device))


def _cmd_prune(args) -> int:
    from .workflows import prune_job

    criterion = args.criterion or ("magnitude" if args.target.strip().lower().startswith("sparsity") else "l2")
    rep = prune_job(args.model, args.target, args.out, criterion=criterion, ignore=tuple(args.ignore),
                    input_shape=args.input_shape, num_classes=args.num_classes, force=args.force,
                    keep_outputs=args.keep_outputs or "all")
    b, a = rep["before"], rep["after"]
    _console().print(_table(f"prunekit prune — {args.model} → {args.target}", ("", "before", "after"),
                            [("params", b["params"], a["params"]),
                             ("non-zero params", b["nonzero_params"], a["nonzero_params"]),
                             ("MACs", b["macs"], a["macs"])]))
    saved = rep["files"]["model"]
    print(f"model: {rep['out']}/{saved}" if saved else "model: not saved (prunekit.io is not available)")
    print(f"report: {rep['out']}/report.json")
    return 0


def _cmd_search(args) -> int:
    from .workflows import search_job

    rep = search_job(baseline=args.baseline, data_name=args.data, target=args.target, candidates=args.candidates,
                     seconds=args.seconds, max_ratio=args.max_ratio, window=args.window,
                     recal_batches=args.recal_batches, val_images=args.val_images, criterion=args.criterion,
                     batch_size=args.batch_size, subset=args.subset, seed=args.seed, device=args.device,
                     ignore=tuple(args.ignore), out=args.out, force=args.force, resume=args.resume,
                     data_dir=args.data_dir, latency_table=args.latency_table,
                     latency_backend=args.latency_backend, latency_clock=args.latency_clock,
                     latency_statistic=args.latency_statistic, latency_checks=args.latency_checks,
                     executor=args.executor, address=args.address, workers=args.workers)
    b = rep["best"]
    _console().print(_table(f"prunekit search — {rep['model']} → {rep['target']}: "
                            f"{rep['record']['evaluations']} candidates", ("", f"kept {rep['kind']}", "score"),
                            [(f"chosen (candidate {b['index']})", f"{b['cost']:.4f}", f"{b['score']:.4f}"),
                             ("uniform", f"{rep['uniform_cost']:.4f}", f"{rep['uniform_score']:.4f}"),
                             ("dense", "1.0000", f"{rep['dense_score']:.4f}")]))
    if "latency" in rep:
        lat = rep["latency"]
        print(f"latency: {lat['chosen_measured_ms']:.3f} ms measured ({lat['chosen_predicted_ms']:.3f} predicted) "
              f"against {lat['dense_measured_ms']:.3f} ms dense: {lat['measured_fraction']:.3f} of it")
    print(f"model: {rep['out']}/model.safetensors (test accuracy {rep['pruned_test_accuracy']:.4f} before "
          f"fine-tuning)")
    print(f"report: {rep['out']}/report.md")
    return 0


def _cmd_inspect(args) -> int:
    from .workflows import inspect_job

    rep = inspect_job(args.model, input_shape=args.input_shape, num_classes=args.num_classes,
                      keep_outputs=args.keep_outputs or "all")
    if args.json:
        return _print_json(rep)
    console = _console()
    console.print(_table(f"{args.model}: {rep['params']} params, {rep['macs']} MACs", ("layer", "width", "params"),
                         [(k, v["width"], v["params"]) for k, v in rep["layers"].items()]))
    console.print(rep["inspect"] if isinstance(rep["inspect"], str) else json.dumps(rep["inspect"], indent=2))
    return 0


def _cmd_bench(args) -> int:
    import torch

    from .bench import bench_job

    if args.threads < 1:
        raise ConfigError(f"--threads {args.threads} must be at least 1")
    torch.set_num_threads(args.threads)
    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers} must be at least 1")
    rep = bench_job(args.grid, out=args.out, resume=not args.fresh, limit=args.limit, reverse=args.reverse,
                    workers=args.workers, keep_going=args.keep_going or None, threads=args.threads,
                    seeds=args.seeds, executor=args.executor, address=args.address)
    failed = f", {rep['failed']} failed (see the report's notes)" if rep.get("failed") else ""
    print(f"{rep['done']} cells done, {rep['ran']} run now, {rep['remaining']} remaining{failed}; "
          f"table: {rep.get('markdown')}")
    return 0


def _cmd_export(args) -> int:
    from .workflows import export_onnx

    return _print_json(export_onnx(args.model, args.onnx, input_shape=args.input_shape, opset=args.opset))


_COMMANDS = {"run": _cmd_run, "train": _cmd_train, "eval": _cmd_eval, "prune": _cmd_prune, "search": _cmd_search, "inspect": _cmd_inspect,
             "bench": _cmd_bench, "methods": _cmd_methods, "export": _cmd_export}


class _BadValue:
    """A flag value its type could not convert: kept so that every bad flag is reported at once."""

    def __init__(self, flag: str, text: str, kind: str):
        self.message = f"{flag} {text!r} is not {kind}"


def _collect_type_errors(parser: argparse.ArgumentParser) -> None:
    """Make every typed flag of every subcommand return a :class:`_BadValue` instead of stopping the parse."""
    kinds = {int: "an integer", float: "a number", _shape: "a shape like 1,3,32,32",
             _optional_int: "an integer or 'all'"}
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for sp in (c for a in subs for c in a.choices.values()):
        for action in sp._actions:
            conv = action.type
            if conv is None or not action.option_strings:
                continue

            def convert(text, conv=conv, flag=action.option_strings[0]):
                try:
                    return conv(text)
                except (argparse.ArgumentTypeError, TypeError, ValueError):
                    return _BadValue(flag, text, kinds.get(conv, "valid"))

            convert.__name__ = getattr(conv, "__name__", "value")
            action.type = convert


def _bad_values(args) -> list[str]:
    out = []
    for v in vars(args).values():
        for item in (v if isinstance(v, list) else [v]):
            if isinstance(item, _BadValue):
                out.append(item.message)
    return out


def _unknown_flags(parser: argparse.ArgumentParser, command: str, extra: list[str]) -> list[str]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    sp = subs[0].choices.get(command) if subs else None
    valid = [o for a in (sp._actions if sp else []) for o in a.option_strings if o.startswith("--")]
    out = []
    after_flag = False
    for tok in extra:
        if after_flag and not tok.startswith("-"):  # the value of the unknown flag just reported
            after_flag = False
            continue
        after_flag = tok.startswith("-") and "=" not in tok
        if tok.startswith("-"):
            flag = tok.split("=", 1)[0]
            hint = closest(flag, valid)
            out.append(f"unknown flag {flag!r}" + (f"; did you mean {hint}?" if hint else "") +
                       f" (see prunekit {command} --help)")
        else:
            out.append(f"unexpected argument {tok!r}: every value follows its flag, e.g. --target macs=0.5 "
                       f"(see prunekit {command} --help)")
    return out


def _device_problem(device) -> str | None:
    """Why ``device`` cannot be used on this machine (None when it can, or is not a device string)."""
    if not isinstance(device, str):
        return None
    import torch

    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        return (f"device={device!r}: no CUDA GPU is available to torch here (torch.cuda.is_available() is "
                f"False); use --device cpu")
    if kind == "cuda" and ":" in device:
        idx = device.split(":", 1)[1]
        if not idx.isdigit() or int(idx) >= torch.cuda.device_count():
            return (f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s); use "
                    f"--device cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        return f"device={device!r}: Apple's MPS backend is not available here; use --device cpu"
    return None


def _run_problems(args) -> list[str]:
    """Every problem of a ``run`` command line, gathered before anything runs (flags, recipe, names, device)."""
    from . import workflows as W

    problems = []
    flags = {k: v for k, v in vars(args).items() if k not in _NOT_RECIPE_FLAGS
             and not isinstance(v, _BadValue) and not k.startswith("_")}
    options = []
    for item in getattr(args, "option", None) or []:
        import yaml

        try:
            yaml.safe_load(item.partition("=")[2])
            options.append(item)
        except yaml.YAMLError as exc:
            problems.append(f"--option {item!r}: the value is not valid YAML ({str(exc).splitlines()[0]}); quote "
                            f"it, e.g. --option 'key=\"text\"'")
    if getattr(args, "robust", None) is not None:
        try:
            W.parse_attack(args.robust)
        except ConfigError as exc:
            problems.append(f"--robust: {exc}")
    try:
        recipe, _ = W.resolve_recipe(getattr(args, "recipe", None), flags, options)
    except ConfigError as exc:
        problems.append(str(exc))
        checks = [("model", W._check_model_name), ("data", W._check_data_name),
                  ("method", lambda m: W._check_method(m, "macs"))]
        for name, check in checks:
            if isinstance(flags.get(name), str) and flags[name]:
                try:
                    check(flags[name])
                except ConfigError as e:
                    if str(e) not in problems:
                        problems.append(str(e))
        device = _device_problem(flags.get("device"))
        if device:
            problems.append(device)
        return problems
    device = _device_problem(recipe.device)
    if device:
        problems.append(device)
    if problems or _bad_values(args):
        try:
            W._validate_run(recipe, recipe.target_kind)
        except ConfigError as e:
            problems.append(str(e))
    return problems


def _report_problems(command: str, problems: list[str]) -> int:
    text = problems[0] if len(problems) == 1 else f"{len(problems)} problems:\n  " + "\n  ".join(problems)
    print(f"prunekit {command}: error: {text}", file=sys.stderr)
    return EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    _collect_type_errors(parser)
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    command = args.command or "run"
    if args.command is None:
        if extra:
            return _report_problems(command, _unknown_flags(parser, command, extra))
        args = parser.parse_args(["run"])
    if getattr(args, "baselines", None):
        import os

        os.environ["PRUNEKIT_BASELINES"] = args.baselines  # read by every verb (and bench's worker processes)
    try:
        problems = _unknown_flags(parser, command, extra) + _bad_values(args)
        if command == "run":
            problems += [p for p in _run_problems(args) if p not in problems]
        elif _device_problem(getattr(args, "device", None)):
            problems.append(_device_problem(args.device))
        if problems:
            return _report_problems(command, problems)
        return _COMMANDS[command](args)
    except PrunekitError as exc:
        print(f"prunekit {command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        hint = "; rerun the same command with --resume to continue" if command in ("run", "search") else ""
        print(f"prunekit {command}: interrupted; no outputs were written{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
