"""The report of ``prunekit search``: ``report.json``, ``report.md`` and ``search.png``."""
from __future__ import annotations

from pathlib import Path

from ..train.checkpoint import atomic_write_bytes
from . import plots as P
from .run import write_json

__all__ = ["render_search_markdown", "write_search_report"]


def render_search_markdown(r: dict) -> str:
    best, rec = r["best"], r["record"]
    lines = [f"# prunekit search — {r['model']} / {r['data']} → {r['target']}", "",
             f"{rec['evaluations']} candidates scored ({rec['proposals']} proposed; sampler `{r['sampler']}`, "
             f"R = {r['max_ratio']}, window {r['window']}), {rec['seconds']:.1f} s. Score: accuracy on "
             f"{r['val_images']} held-out training images after BatchNorm recalibration on {r['recal_batches']} "
             f"training batches (adaptive BN).", "",
             "| | kept " + r["kind"] + " | score |", "|---|---|---|",
             f"| chosen (candidate {best['index']}) | {best['cost']:.4f} | {best['score']:.4f} |",
             f"| uniform allocation, same criterion | {r['uniform_cost']:.4f} | {r['uniform_score']:.4f} |",
             f"| dense | 1.0000 | {r['dense_score']:.4f} |", "",
             "Top candidates:", "", "| candidate | kept | score |", "|---|---|---|"]
    for t in sorted(rec["trials"], key=lambda t: (-t["score"], t["index"]))[:5]:
        lines.append(f"| {t['index']} | {t['cost']:.4f} | {t['score']:.4f} |")
    lines += ["", "Widths (kept channels):", "", "| layer | dense | uniform | chosen |", "|---|---|---|---|"]
    for n, w in r["widths"].items():
        lines.append(f"| `{n}` | {r['dense_widths'][n]} | {r['uniform_widths'][n]} | {w} |")
    if r.get("latency"):
        lat = r["latency"]
        clock = "CPU time of the timing thread" if lat.get("clock") == "cpu" else "wall clock"
        lines += ["", f"Latency (ms per forward, {lat.get('backend', 'torch')}, {lat['threads']} thread(s), "
                      f"{clock}, {lat.get('statistic', 'median')} of the timed runs; the latency table's timing "
                      f"setup): "
                      f"dense {lat['dense_measured_ms']:.3f} measured / {lat['dense_predicted_ms']:.3f} predicted; "
                      f"chosen {lat['chosen_measured_ms']:.3f} measured / {lat['chosen_predicted_ms']:.3f} "
                      f"predicted, {lat['measured_fraction']:.3f} of the dense latency as measured."]
        for i, c in enumerate(r.get("latency_checks", [])):
            lines.append(f"- check {i + 1}: candidate {c['index']}, table limit {c['table_limit']:.3f}, predicted "
                         f"{c['predicted']:.3f}, measured {c['measured']:.3f} of the dense latency: "
                         + ("meets the target" if c["met"] else "misses it"))
    if r.get("files", {}).get("plot"):
        lines += ["", f"![search]({r['files']['plot']})"]
    if r.get("files", {}).get("model"):
        lines += ["", f"The model cut to the chosen widths (BatchNorm recalibrated, not fine-tuned): "
                      f"`{r['files']['model']}`; test accuracy {r['pruned_test_accuracy']:.4f} "
                      f"(dense {r['dense_test_accuracy']:.4f})."]
    return "\n".join(lines) + "\n"


def write_search_report(report: dict, out_dir) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot = P.plot_search(report, out / "search.png")
    report = {**report, "files": {**report.get("files", {}), "plot": plot.name, "markdown": "report.md"}}
    write_json(report, out / "report.json")
    atomic_write_bytes(out / "report.md", render_search_markdown(report).encode())
    return {"json": out / "report.json", "markdown": out / "report.md", "plot": plot}
