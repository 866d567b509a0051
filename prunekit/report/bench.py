"""Benchmark reports: aggregate grid cells (method × target × seed) into mean ± std rows, Markdown, Pareto plot."""
from __future__ import annotations

import statistics
from pathlib import Path

from .run import write_json

_ACC = ("acc_pruned", "acc_recal", "acc_finetuned")
_NUM = ("params", "macs", "latency_ms", "params_base", "macs_base", "latency_base_ms", "acc_base", "time_s")


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate_cells(cells: list[dict]) -> list[dict]:
    """One row per (method, target): mean and sample std over seeds of every number.

    Example:
        >>> rows = aggregate_cells([{"method": "l1", "source": "prunekit", "target": "macs=0.5", "seed": s,
        ...                          "acc_finetuned": a} for s, a in ((0, 0.9), (1, 0.8))])
        >>> round(rows[0]["acc_finetuned_mean"], 3), round(rows[0]["acc_finetuned_std"], 4), rows[0]["n"]
        (0.85, 0.0707, 2)
    """
    groups: dict[tuple, list[dict]] = {}
    for cell in cells:
        groups.setdefault((cell["target"], cell["source"], cell["method"]), []).append(cell)
    rows = []
    for (target, source, method), group in groups.items():
        row = {"target": target, "source": source, "method": method, "n": len(group),
               "seeds": sorted(c["seed"] for c in group)}
        for key in _ACC + _NUM:
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([c.get(key) for c in group])
        rows.append(row)
    rows.sort(key=lambda r: (r["target"], r["source"] != "prunekit", r["source"], r["method"]))
    return rows


def _pm(mean, std, scale=100.0, digits=2) -> str:
    if mean is None:
        return "—"
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def render_bench_markdown(rows: list[dict], protocol: dict | None = None, command: str | None = None) -> str:
    """The results table (one row per method and target) with the protocol and command above it."""
    lines = []
    if command:
        lines += ["Command:", "", "```bash", command, "```", ""]
    if protocol:
        lines += ["Protocol: " + "; ".join(f"{k} = {v}" for k, v in protocol.items()) + ".", ""]
    base = next((r for r in rows if r.get("acc_base_mean") is not None), None)
    if base is not None:
        lines += [f"Baseline test accuracy: {100 * base['acc_base_mean']:.2f}%, "
                  f"{base['params_base_mean'] / 1e3:.1f} k params, {base['macs_base_mean'] / 1e6:.2f} M MACs.", ""]
    lines += ["| target | tool | method | seeds | acc. after prune (%) | after BN recal. (%) | after fine-tune (%) "
              "| params (k) | MACs (M) | MACs kept | latency ms, baseline → pruned |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        macs_kept = (r["macs_mean"] / r["macs_base_mean"]) if r.get("macs_mean") and r.get("macs_base_mean") else None
        lat = "—" if r.get("latency_ms_mean") is None else f"{r['latency_ms_mean']:.2f}"
        if r.get("latency_ms_mean") is not None and r.get("latency_base_ms_mean") is not None:
            lat = f"{r['latency_base_ms_mean']:.1f} → {lat}"
        params = "—" if r["params_mean"] is None else f"{r['params_mean'] / 1e3:.1f}"
        macs = "—" if r["macs_mean"] is None else f"{r['macs_mean'] / 1e6:.2f}"
        kept = "—" if macs_kept is None else f"{macs_kept:.3f}"
        lines.append(
            f"| {r['target']} | {r['source']} | {r['method']} | {r['n']} | "
            f"{_pm(r['acc_pruned_mean'], r['acc_pruned_std'])} | {_pm(r['acc_recal_mean'], r['acc_recal_std'])} | "
            f"{_pm(r['acc_finetuned_mean'], r['acc_finetuned_std'])} | {params} | {macs} | {kept} | {lat} |"
        )
    return "\n".join(lines) + "\n"


def write_bench_report(cells: list[dict], out_prefix, protocol: dict | None = None, command: str | None = None,
                       title: str = "Benchmark", notes: list[str] | None = None) -> dict:
    """Write ``<prefix>.json`` (cells + rows + protocol), ``<prefix>.md`` and ``<prefix>.png`` (Pareto)."""
    from .plots import plot_pareto

    prefix = Path(out_prefix)
    rows = aggregate_cells(cells)
    write_json({"type": "prunekit.BenchReport", "version": 1, "protocol": protocol or {}, "command": command,
                "notes": notes or [], "rows": rows, "cells": cells}, prefix.with_suffix(".json"))
    md = f"# {title}\n\n" + render_bench_markdown(rows, protocol, command)
    if notes:
        md += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    points = [{"label": f"{r['source']}:{r['method']}", "macs": r["macs_mean"], "accuracy": r["acc_finetuned_mean"],
               "accuracy_std": r["acc_finetuned_std"] or 0.0}
              for r in rows if r["macs_mean"] is not None and r["acc_finetuned_mean"] is not None]
    base = next((r for r in rows if r.get("acc_base_mean") is not None and r.get("macs_base_mean")), None)
    if points and base is not None:
        points.append({"label": "baseline (unpruned)", "macs": base["macs_base_mean"], "accuracy": base["acc_base_mean"]})
    made = {"json": prefix.with_suffix(".json"), "markdown": prefix.with_suffix(".md")}
    if points:
        made["pareto"] = plot_pareto(points, prefix.with_suffix(".png"), title=title)
        md += f"\n![Accuracy vs MACs]({prefix.with_suffix('.png').name})\n"
    prefix.with_suffix(".md").write_text(md)
    return made
