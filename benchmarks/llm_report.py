"""Assemble ``benchmarks/results/language_models.md`` from the language-model results (no computation):
the two baselines (``lm_baselines.py``), the one-shot perplexity tables (``llm_oneshot.py``), the structural
tables (``llm_structural.py``), the 2:4 speed on this CPU (``nm_speed.py``) and the cost at 1.1B
(``llm_oneshot_cost.py``). Run after those: ``python benchmarks/llm_report.py``.
"""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BASELINES = ("hf-llama-tiny-text-python-docs", "gpt-tiny-text-python-docs")


def _read(path: Path) -> str | None:
    return path.read_text().strip() if path.exists() else None


def main() -> None:
    out = ["# Language models: baselines trained here, one-shot and structural pruning, 2:4 speed", ""]
    out += ["## Baselines (`python benchmarks/lm_baselines.py --model gpt-tiny` / `--model hf:llama-tiny`)", "",
            "Trained on `text:python-docs` (the Python documentation, split by document; byte-level BPE, 4,096 "
            "tokens; 128-token blocks), one CPU core each, both at once.", "",
            "| baseline | parameters | tokens seen | test perplexity | validation perplexity by epoch | minutes |",
            "|---|---:|---:|---:|---|---:|"]
    for name in BASELINES:
        f = RESULTS / "lm_baselines" / f"{name}.json"
        if f.exists():
            r = json.loads(f.read_text())
            curve = ", ".join(f"{v:.1f}" for v in r["val_perplexity_per_epoch"])
            out.append(f"| `{name}` | {r['params'] / 1e6:.2f} M | {r['tokens_seen'] / 1e6:.1f} M | "
                       f"{r['test_perplexity']:.2f} | {curve} | {r['seconds_this_run'] / 60:.0f} |")
    out += ["", "![validation curves](lm_baselines/curves.png)", ""]
    for name in BASELINES:
        md = _read(RESULTS / "llm_oneshot" / f"{name}__text_python-docs.md")
        if md:
            out += ["## " + md.splitlines()[0].lstrip("# ").strip(), "", *md.splitlines()[1:], ""]
    for name in BASELINES:
        md = _read(RESULTS / "llm_structural" / name / "table.md")
        if md:
            out += [f"## Structural pruning of `{name}`: test perplexity against MACs "
                    f"(`python benchmarks/llm_structural.py --baseline {name} --data text:python-docs --seq-len 128`)",
                    "", md, "", f"![perplexity against MACs](llm_structural/{name}/plot.png)", ""]
    nm = RESULTS / "nm_speed.json"
    if nm.exists():
        r = json.loads(nm.read_text())
        out += [f"## 2:4 and 50% unstructured: speed of one TinyLlama-shaped block (`{r['command']}`)", "",
                f"Device: {r['device']}, {r['dtype']}, median of {r['repeats']} paired runs.", "",
                "| pattern | layout | tokens | dense ms | sparse ms | speed (dense / sparse) |", "|---|---|---:|---:|---:|---:|"]
        for row in r["rows"]:
            out.append(f"| {row['pattern']} | {row['layout']} | {row['tokens']} | {row['dense_ms']:.2f} | "
                       f"{row['sparse_ms']:.2f} | {row['speedup']:.2f}x |")
        out.append("")
    cost = RESULTS / "llm_oneshot_cost.json"
    if cost.exists():
        r = json.loads(cost.read_text())
        out += [f"## Cost at 1.1B parameters (`python benchmarks/llm_oneshot_cost.py`)", "",
                f"{r['config']}; {r['layers_built']} of {r['layers_full']} blocks built, {r['calib_seqs']} x "
                f"{r['seq_len']} calibration tokens, {r['threads']} thread(s); CPU seconds (wall time shared "
                f"the machine).", "",
                "| method | CPU s per block | peak extra memory (MB) | model size (GB, bf16) |", "|---|---:|---:|---:|"]
        for row in r["rows"]:
            cpu = ", ".join(f"{s:.1f}" for s in row["block_cpu_seconds"])
            out.append(f"| {row['method']} | {cpu} | {row['peak_extra_mb']:.0f} | {row['model_gb_bf16_full']} |")
        out.append("")
    (RESULTS / "language_models.md").write_text("\n".join(out).rstrip() + "\n")
    print(RESULTS / "language_models.md")


if __name__ == "__main__":
    main()
