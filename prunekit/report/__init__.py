"""Reports: JSON first (every number), then Markdown and PNG plots for people.

A run report is a plain JSON-serialisable dict (see :func:`prunekit.report.run.validate_run_report` for its
keys); :func:`write_run_report` writes ``report.json``, ``report.md`` and the plots next to each other.
The benchmark writes its own table with :func:`prunekit.report.bench.write_bench_report`.
"""
from __future__ import annotations

from .run import RUN_REPORT_TYPE, render_run_markdown, summary_rows, write_json, write_run_report
from .bench import aggregate_cells, render_bench_markdown, write_bench_report

__all__ = ["RUN_REPORT_TYPE", "render_run_markdown", "summary_rows", "write_json", "write_run_report",
           "aggregate_cells", "render_bench_markdown", "write_bench_report"]
