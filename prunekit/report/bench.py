"""Benchmark reports: aggregate grid cells (method × target × seed) into mean ± std rows, Markdown, Pareto plot."""
from __future__ import annotations

import statistics
from pathlib import Path

from .run import write_json
from .plots import plot_pareto

_ACC = ("acc_pruned", "acc_recal", "acc_finetuned")
_NUM = ("params", "macs", "latency_ms", "params_base", "macs_base", "latency_base_ms", "acc_base", "time_s",
        "nonzero_params", "epochs_precut", "epochs_finetune", "epochs_total")


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
        # the first column: right after the cut with BN recalibration (right after the cut where none ran)
        row["acc_cut_mean"], row["acc_cut_std"] = _mean_std(
            [c.get("acc_recal") if c.get("acc_recal") is not None else c.get("acc_pruned") for c in group])
        row["control"] = any(c.get("control") for c in group)
        engaged = [c.get("engaged") for c in group]
        row["engaged"] = None if all(e is None for e in engaged) else all(e is True for e in engaged)
        row["not_engaged_seeds"] = sum(1 for e in engaged if e is False)
        row["telemetry"] = summarize_telemetry([c.get("telemetry") or {} for c in group])
        if any(c.get("acc_robust") is not None for c in group):  # grids with `robust:` only
            row["acc_robust_mean"], row["acc_robust_std"] = _mean_std([c.get("acc_robust") for c in group])
        for key in ("ppl_base", "ppl_pruned", "ppl_finetuned"):  # language models only
            if any(c.get(key) is not None for c in group):
                row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([c.get(key) for c in group])
        rows.append(row)
    rows.sort(key=lambda r: (r["target"], r["source"] != "prunekit", r["source"], r["method"]))
    return rows


def summarize_telemetry(per_seed: list[dict]) -> dict:
    """One value per telemetry key over seeds: the mean of numbers (a fraction for flags), the distinct
    strings joined.

    Example:
        >>> summarize_telemetry([{"selections": 3, "zeroed": 0.5}, {"selections": 5, "zeroed": 0.25}])
        {'selections': 4.0, 'zeroed': 0.375}
    """
    out: dict = {}
    for key in dict.fromkeys(k for t in per_seed for k in t):
        values = [t[key] for t in per_seed if key in t and t[key] is not None]
        if values and all(isinstance(v, (int, float)) for v in values):
            out[key] = statistics.fmean(float(v) for v in values)
        elif values:
            out[key] = "/".join(dict.fromkeys(str(v) for v in values))
    return out


def _fmt_telemetry(summary: dict) -> str:
    def num(v):
        if isinstance(v, str):
            return v
        return f"{v:.0f}" if float(v).is_integer() else f"{v:.3g}"

    return ", ".join(f"{k}={num(v)}" for k, v in summary.items()) or "—"


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
    lm = any("ppl_finetuned_mean" in r for r in rows)
    if base is not None:
        ppl = f"test perplexity {base['ppl_base_mean']:.2f}, " if base.get("ppl_base_mean") is not None else ""
        lines += [f"Baseline {ppl}test accuracy: {100 * base['acc_base_mean']:.2f}%, "
                  f"{base['params_base_mean'] / 1e3:.1f} k params, {base['macs_base_mean'] / 1e6:.2f} M MACs.", ""]
    lines += ["| target | tool | method | seeds | after the cut, BN recal. (%) | after fine-tune (%) | MACs kept "
              "| weights kept | epochs: pre-cut + fine-tune = total | engaged | telemetry (mean over seeds) "
              "| params (k) | latency ms, baseline → pruned |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|"]
    robust = any("acc_robust_mean" in r for r in rows)
    if robust:  # the attack's column right after the fine-tuned accuracy (grids with `robust:` only)
        attack = (protocol or {}).get("robust", "attack")
        lines[-2] = lines[-2].replace("| after fine-tune (%) |", f"| after fine-tune (%) | under {attack} (%) |")
        lines[-1] = lines[-1].replace("|---:|---:|---:|", "|---:|---:|---:|---:|", 1)
    if lm:  # language models: test perplexity after the cut and after the fine-tune, before the accuracies
        lines[-2] = lines[-2].replace("| seeds |", "| seeds | perplexity after the cut | perplexity after fine-tune |")
        lines[-1] = lines[-1].replace("|---:|", "|---:|---:|---:|", 1)
    for r in rows:
        macs_kept = (r["macs_mean"] / r["macs_base_mean"]) if r.get("macs_mean") and r.get("macs_base_mean") else None
        w_kept = (r["nonzero_params_mean"] / r["params_base_mean"]
                  if r.get("nonzero_params_mean") and r.get("params_base_mean") else None)
        structured = not str(r["target"]).startswith("sparsity")
        lat = "—" if r.get("latency_ms_mean") is None or not structured else f"{r['latency_ms_mean']:.2f}"
        if lat != "—" and r.get("latency_base_ms_mean") is not None:
            lat = f"{r['latency_base_ms_mean']:.1f} → {lat}"
        params = "—" if r["params_mean"] is None else f"{r['params_mean'] / 1e3:.1f}"
        kept = "—" if macs_kept is None else f"{macs_kept:.3f}"
        wk = "—" if w_kept is None else f"{w_kept:.3f}"
        if r.get("epochs_total_mean") is None:
            epochs = "—"
        else:
            epochs = (f"{r['epochs_precut_mean']:.3g} + {r['epochs_finetune_mean']:.3g} = "
                      f"{r['epochs_total_mean']:.3g}")
        if r.get("engaged") is None:
            engaged = "—"
        elif r["engaged"]:
            engaged = "yes"
        else:
            engaged = f"**NO** ({r['not_engaged_seeds']}/{r['n']} seeds)"
        method = r["method"] + (" (control)" if r.get("control") else "")
        if r.get("engaged") is False:
            method = f"{r['method']} **(not engaged)**"
        lines.append(
            f"| {r['target']} | {r['source']} | {method} | {r['n']} | "
            + (f"{_pm(r.get('ppl_pruned_mean'), r.get('ppl_pruned_std'), scale=1.0)} | "
               f"{_pm(r.get('ppl_finetuned_mean'), r.get('ppl_finetuned_std'), scale=1.0)} | " if lm else "")
            + f"{_pm(r.get('acc_cut_mean'), r.get('acc_cut_std'))} | "
            f"{_pm(r['acc_finetuned_mean'], r['acc_finetuned_std'])} | "
            + (f"{_pm(r.get('acc_robust_mean'), r.get('acc_robust_std'))} | " if robust else "")
            + f"{kept} | {wk} | {epochs} | {engaged} | "
            f"{_fmt_telemetry(r.get('telemetry') or {})} | {params} | {lat} |"
        )
    lines += ["", "After the cut, BN recal.: accuracy right after pruning with BatchNorm statistics re-estimated, "
              "before any fine-tune (right after the cut for sparsity targets and models without BatchNorm). "
              "Epochs: the training each row consumed, counted in optimizer steps (the method's own report where "
              "it gives one); the baseline's training is shared by every row and not counted. Mean ± sample std "
              "over seeds."]
    return "\n".join(lines) + "\n"


def write_bench_report(cells: list[dict], out_prefix, protocol: dict | None = None, command: str | None = None,
                       title: str = "Benchmark", notes: list[str] | None = None) -> dict:
    """Write ``<prefix>.json`` (cells + rows + protocol), ``<prefix>.md`` and ``<prefix>.png`` (Pareto)."""
    prefix = Path(out_prefix)
    path = {ext: prefix.parent / f"{prefix.name}{ext}" for ext in (".json", ".md", ".png")}  # "v1.2" keeps its ".2"
    rows = aggregate_cells(cells)
    write_json({"type": "prunekit.BenchReport", "version": 1, "protocol": protocol or {}, "command": command,
                "notes": notes or [], "rows": rows, "cells": cells}, path[".json"])
    md = f"# {title}\n\n" + render_bench_markdown(rows, protocol, command)
    if notes:
        md += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    points = [{"label": f"{r['source']}:{r['method']}", "macs": r["macs_mean"], "accuracy": r["acc_finetuned_mean"],
               "accuracy_std": r["acc_finetuned_std"] or 0.0}
              for r in rows if r["macs_mean"] is not None and r["acc_finetuned_mean"] is not None]
    base = next((r for r in rows if r.get("acc_base_mean") is not None and r.get("macs_base_mean")), None)
    if points and base is not None:
        points.append({"label": "baseline (unpruned)", "macs": base["macs_base_mean"], "accuracy": base["acc_base_mean"]})
    made = {"json": path[".json"], "markdown": path[".md"]}
    if points:
        made["pareto"] = plot_pareto(points, path[".png"], title=title)
        md += f"\n![Accuracy vs MACs]({path['.png'].name})\n"
    path[".md"].write_text(md)
    return made
