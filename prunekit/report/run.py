"""The run report: ``report.json`` (all numbers), ``report.md`` and the plots of one ``prunekit run``."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from ..errors import ConfigError
from . import plots as P
from ..train.checkpoint import atomic_write_bytes

log = logging.getLogger(__name__)

RUN_REPORT_TYPE = "prunekit.RunReport"
_REQUIRED = ("recipe", "method", "before", "after")


def write_json(data, path) -> Path:
    """Write ``data`` as indented JSON, atomically (a reader never sees half a file)."""
    path = Path(path)
    # temporary name per process (several workers may write one file), fsynced, renamed, removed on any exit
    atomic_write_bytes(path, (json.dumps(data, indent=2, default=_jsonable) + "\n").encode())
    return path


def _jsonable(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if hasattr(obj, "__dict__"):
        return {k: v for k, v in vars(obj).items() if not k.startswith("_")}
    return str(obj)


def validate_run_report(report: dict) -> None:
    missing = [k for k in _REQUIRED if k not in report]
    if missing:
        raise ConfigError(f"run report is missing keys {missing}; a run report needs {list(_REQUIRED)}")


def _fmt(value, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if kind == "acc":
        return f"{100 * value:.2f}%"
    if kind == "count":
        return f"{value / 1e6:.3f} M" if value >= 1e6 else f"{value / 1e3:.1f} k" if value >= 1e3 else str(value)
    if kind == "ms":
        return f"{value:.3f} ms"
    if kind == "ppl":
        return f"{value:.2f}"
    return str(value)


def summary_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """``(quantity, before, after, change)`` rows for the end-of-run table."""
    b, a = report["before"], report["after"]
    rows = []
    for key, label, kind in (("perplexity", "test perplexity", "ppl"), ("accuracy", "test accuracy", "acc"),
                             ("params", "parameters", "count"),
                             ("macs", "MACs", "count"), ("latency_ms", "latency (batch 1)", "ms")):
        vb, va = b.get(key), a.get(key)
        if vb is None and va is None:
            continue
        if kind == "acc" and vb is not None and va is not None:
            change = f"{100 * (va - vb):+.2f} pts"
        elif vb and va is not None:
            change = f"×{va / vb:.3f}"
        else:
            change = "—"
        rows.append((label, _fmt(vb, kind), _fmt(va, kind), change))
        if key == "accuracy" and report.get("robust"):  # only with `prunekit run --robust ...`
            rb, ra, atk = b.get("robust_accuracy"), a.get("robust_accuracy"), report["robust"]
            label = f"{atk.get('attack', 'attack')} accuracy (eps {atk.get('eps')}" + \
                (f", {atk['steps']} steps)" if "steps" in atk else ")")
            change = f"{100 * (ra - rb):+.2f} pts" if rb is not None and ra is not None else "—"
            rows.append((label, _fmt(rb, "acc"), _fmt(ra, "acc"), change))
    return rows


def format_value(v) -> str:
    """A telemetry value for people: floats to 4 significant digits, long lists shortened."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and len(v) > 8:
        return ", ".join(format_value(x) for x in v[:8]) + f", … ({len(v)} values)"
    if isinstance(v, dict) and len(v) > 4:  # per-layer figures: their range, not every layer
        nums = [x for x in v.values() if isinstance(x, (int, float)) and not isinstance(x, bool)]
        if len(nums) == len(v):
            return f"{len(v)} layers, {format_value(float(min(nums)))} to {format_value(float(max(nums)))}"
        return ", ".join(f"{k}: {format_value(x)}" for k, x in list(v.items())[:4]) + f", … ({len(v)} entries)"
    return str(v)


def render_run_markdown(report: dict, plots: dict | None = None) -> str:
    """A Markdown page for people: summary table, stages, per-layer table and the plots."""
    validate_run_report(report)
    r, m = report["recipe"], report["method"]
    lines = [f"# prunekit run: {r.get('model')} on {r.get('data')}", ""]
    images = (report.get("data") or {}).get("train_images") or r.get("subset") or "all"
    tests = (report.get("data") or {}).get("test_images")
    seq = (report.get("model_build") or {}).get("input_size")
    unit = f"blocks of {seq} tokens" if report.get("stages_perplexity") else "images"  # language models: text
    lines.append(f"Method **{m.get('id')}** ({m.get('via', 'method')}), target `{r.get('target')}`, "
                 f"{r.get('finetune_epochs')} fine-tune epoch(s) on {images} training {unit}, seed {r.get('seed')}"
                 + (f"; measured on all {tests} test {unit}." if tests else "."))
    if m.get("note"):
        lines += ["", f"> {m['note']}"]
    lines += ["", "| quantity | before | after | change |", "|---|---:|---:|---:|"]
    lines += [f"| {q} | {b} | {a} | {c} |" for q, b, a, c in summary_rows(report)]
    telemetry = m.get("telemetry") or {}
    if telemetry:
        state = {True: "engaged", False: "**did not engage**"}.get(m.get("engaged"), "not checked")
        lines += ["", f"## Mechanism ({state})", "", "| figure | value |", "|---|---:|"]
        lines += [f"| {k} | {format_value(v)} |" for k, v in telemetry.items()]
    for w in m.get("warnings") or []:
        lines += ["", f"> warning: {w}"]
    stages = report.get("stages") or {}
    if stages:
        lines += ["", "## Accuracy at each stage", "", "| stage | test accuracy |", "|---|---:|"]
        ppl = report.get("stages_perplexity") or {}
        if ppl:  # language models: next-token accuracy and perplexity of each stage
            lines[-2:] = ["| stage | test accuracy | test perplexity |", "|---|---:|---:|"]
            lines += [f"| {name} | {_fmt(acc, 'acc')} | {_fmt(ppl.get(name), 'ppl')} |"
                      for name, acc in stages.items()]
        else:
            lines += [f"| {name} | {_fmt(acc, 'acc')} |" for name, acc in stages.items()]
    layers = report.get("per_layer") or {}
    if layers:
        lines += ["", "## Layers", "", "| layer | width before | width after | weight sparsity |",
                  "|---|---:|---:|---:|"]
        for fqn, row in layers.items():
            lines.append(f"| `{fqn}` | {row.get('width_before')} | {row.get('width_after')} | "
                         f"{100 * row.get('sparsity', 0.0):.1f}% |")
    if plots:
        lines += ["", "## Plots", ""]
        for name, path in plots.items():
            lines += [f"![{name}]({Path(path).name})", ""]
    timings = report.get("timings") or {}
    if timings:
        lines += ["", "Wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) + "."]
    return "\n".join(lines).rstrip() + "\n"


def write_run_report(report: dict, out_dir) -> dict:
    """Write ``report.json``, the PNG plots and ``report.md`` into ``out_dir``; returns ``{name: path}``."""
    validate_run_report(report)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    made = {}
    layers = report.get("per_layer") or {}
    if layers:
        made["widths"] = P.plot_widths(layers, out / "widths.png")
        made["sparsity"] = P.plot_sparsity(layers, out / "sparsity.png")
    history = report.get("history") or []
    if history:
        made["training"] = P.plot_training(history, out / "training.png")
    if report.get("sensitivity"):
        made["sensitivity"] = P.plot_sensitivity(report["sensitivity"], out / "sensitivity.png")
    point = [{"label": report["method"].get("id", "pruned"), "macs": report["after"].get("macs"),
              "accuracy": report["after"].get("accuracy")},
             {"label": "baseline", "macs": report["before"].get("macs"), "accuracy": report["before"].get("accuracy")}]
    if all(p["macs"] is not None and p["accuracy"] is not None for p in point):
        made["pareto"] = P.plot_pareto(point, out / "pareto.png", title="Accuracy vs MACs")
    files = {name: str(path.name) for name, path in made.items()}
    report = {**report, "files": {**report.get("files", {}), **files, "markdown": "report.md"}}
    write_json(report, out / "report.json")

    atomic_write_bytes(out / "report.md", render_run_markdown(report, made).encode())
    log.info("report written to %s", out)
    return {"json": out / "report.json", "markdown": out / "report.md", **made}
