"""Benchmark scripts (run from the repository root); see BENCHMARKS.md."""
