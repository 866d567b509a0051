"""Every timm model: structural pruning at sparsity 0.5 with prunekit and Torch-Pruning side by side.

The coverage zoo (``benchmarks/zoo_coverage.py``) holds the smallest model of each timm family; this sweep takes
every name of ``timm.list_models()``. Each model is built with random weights (no downloads) at the input size
of its pretrained config (convnets at 96 px where they run there, as in the zoo), pruned at sparsity 0.5 with the
classifier kept, and passes when pruning succeeds, the pruned model runs, every output keeps its shape and the
parameter count drops by at least 20% (``benchmarks.zoo.run_case``, the zoo's criterion and workers).

Parameter counts come from building each model on the meta device (cached in ``timm_params.json``, so a
model too large for this machine is listed with its size and never built for real). Results are appended
to a JSONL file as they come, so an interrupted run resumes where it stopped.

Usage (from the repository root):
    python benchmarks/timm_sweep.py                      # the default: a fixed sample of 16 models (minutes)
    nice -n 10 python benchmarks/timm_sweep.py --all     # every timm model (hours; resumable)
    python benchmarks/timm_sweep.py --report-only
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import zoo_coverage as zc  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MAX_PARAMS = 150_000_000  # larger models are listed, not built: a float32 copy per tool plus Torch-Pruning's graph
SAMPLE, SEED = 16, 0


def meta_params(names: list[str], cache: Path) -> dict[str, dict]:
    """``{name: {"family", "params"} or {"family", "error"}}`` from building each model on the meta device."""
    import timm
    import torch
    from timm.models import _registry

    known = json.loads(cache.read_text()) if cache.exists() else {}
    todo = [n for n in names if n not in known]
    for i, name in enumerate(todo):
        rec = {"family": _registry._model_to_module.get(name, "unknown")}
        try:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False, num_classes=10)
            rec["params"] = int(sum(p.numel() for p in model.parameters()))
        except Exception as e:  # noqa: BLE001 - a model that cannot be built is reported with its error
            rec["error"] = f"{type(e).__name__}: {str(e).strip()[:200]}"
        known[name] = rec
        if i % 50 == 49 or i == len(todo) - 1:
            cache.write_text(json.dumps(known, indent=0, sort_keys=True))
    return {n: known[n] for n in names}


def choose(names: list[str], sample: int | None, seed: int) -> list[str]:
    """The models to run: all of them, or a fixed random sample of the names."""
    if sample is None:
        return names
    return sorted(random.Random(seed).sample(names, min(sample, len(names))))


def _median(xs):
    return statistics.median(xs) if xs else None


def write_markdown(jsonl: Path, md: Path, names: list[str], info: dict, command: str) -> None:
    recs = zc.load_records(jsonl)
    too_big = [n for n in names if info[n].get("params", 0) > MAX_PARAMS]
    unbuildable = [n for n in names if "error" in info[n]]
    fams: dict[str, list[str]] = collections.defaultdict(list)
    for n in names:
        fams[info[n]["family"]].append(n)
    lines = [
        "# Every timm model: prunekit next to Torch-Pruning",
        "",
        f"Produced by `{command}`; rendered from `{jsonl.relative_to(ROOT)}` by "
        f"`python benchmarks/timm_sweep.py --report-only{' --all' if len(names) > SAMPLE else ''}`.",
        f"Machine: {zc.machine()}. Versions: {zc.versions()}.",
        "",
        "Each model is built with random weights at its pretrained config's input size (convnets at 96 px where"
        " they run there), pruned at sparsity 0.5 with the classifier kept (prunekit `pk.prune_(model,"
        " example_inputs=x, sparsity=0.5, ignore=heads)`, Torch-Pruning `MetaPruner(..., MagnitudeImportance(p=2),"
        " pruning_ratio=0.5, ignored_layers=heads)`), and passes when pruning succeeds, the pruned model runs,"
        " every output keeps its shape and the parameters drop by at least 20%. Prune time is the pruning call"
        " alone (one thread).",
        "",
        f"Models: {len(names)}; not built because larger than {MAX_PARAMS / 1e6:.0f} M parameters:"
        f" {len(too_big)}; not buildable on the meta device: {len(unbuildable)}.",
        "",
        "| family | models | prunekit pass / run | Torch-Pruning pass / run | prunekit prune s (median / worst) |"
        " Torch-Pruning prune s (median / worst) | prunekit params drop (median) | Torch-Pruning params drop (median) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    total = collections.Counter()
    times = {"prunekit": [], "torch-pruning": []}
    drops = {"prunekit": [], "torch-pruning": []}

    def row(label, members):
        c = collections.Counter()
        t = {"prunekit": [], "torch-pruning": []}
        d = {"prunekit": [], "torch-pruning": []}
        for n in members:
            for tool, key in (("prunekit", "pk"), ("torch-pruning", "tp")):
                r = recs.get((f"timm:{n}", tool))
                if r is None:
                    continue
                c[f"{key}_run"] += 1
                if r["status"] == "pass":
                    c[f"{key}_pass"] += 1
                    t[tool].append(r.get("prune_s", 0.0))
                    d[tool].append(r.get("param_drop", 0.0))

        def tm(tool):
            return f"{_median(t[tool]):.2f} / {max(t[tool]):.2f}" if t[tool] else "-"

        def dr(tool):
            return f"{_median(d[tool]):.1%}" if d[tool] else "-"
        return c, t, d, (f"| {label} | {len(members)} | {c['pk_pass']} / {c['pk_run']} | {c['tp_pass']} / {c['tp_run']}"
                         f" | {tm('prunekit')} | {tm('torch-pruning')} | {dr('prunekit')} | {dr('torch-pruning')} |")

    for fam in sorted(fams):
        c, t, d, text = row(fam, fams[fam])
        if c["pk_run"] or c["tp_run"]:
            lines.append(text)
            total.update(c)
            for tool in times:
                times[tool] += t[tool]
                drops[tool] += d[tool]
    lines.append(row("**all**", names)[3])
    only_tp = [n for n in names if (a := recs.get((f"timm:{n}", "torch-pruning"))) and a["status"] == "pass"
               and (b := recs.get((f"timm:{n}", "prunekit"))) and b["status"] != "pass"]
    lines += ["", f"Models Torch-Pruning passes and prunekit fails ({len(only_tp)}): "
              + (", ".join(f"`{n}`" for n in only_tp) or "none") + ".", ""]
    checked = [(n, r) for n in names if (r := recs.get((f"timm:{n}", "prunekit"))) and "equivalent" in r]
    exact = [(n, r) for n, r in checked if r["equivalent"] is not None]
    unequal = [n for n, r in exact if not r["equivalent"]]
    lines += [f"Masked-twin check (float64, the pruned model against the unpruned one with the removed slices"
              f" zeroed): {len(exact)} of {len(checked)} checked models have only exact groups (channels local);"
              f" {len(exact) - len(unequal)} of them equal their twin"
              + (f", these do not: {', '.join(f'`{n}`' for n in unequal)}" if unequal else "")
              + f". The other {len(checked) - len(exact)} have an approximate group (a norm or softmax across"
              " channels), where the twin differs by design.", ""]
    lines += ["## prunekit failures by cause", "", "| cause | models |", "|---|---|"]
    causes: dict[str, list[str]] = collections.defaultdict(list)
    for n in names:
        r = recs.get((f"timm:{n}", "prunekit"))
        if r is not None and r["status"] != "pass":
            causes[zc.cause_of(r)].append(n)
    for cause, models in sorted(causes.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"| {cause} | {len(models)}: " + ", ".join(f"`{m}`" for m in models) + " |")
    if too_big:
        lines += ["", f"## Not built (more than {MAX_PARAMS / 1e6:.0f} M parameters)", "",
                  ", ".join(f"`{n}` ({info[n]['params'] / 1e6:.0f} M)" for n in too_big)]
    if unbuildable:
        lines += ["", "## Not buildable here", "", "| model | error |", "|---|---|"]
        lines += [f"| `{n}` | {info[n]['error'].replace('|', '/')} |" for n in unbuildable]
    lines += ["", "## Per model", "", "| model | family | params | prunekit | drop | s | Torch-Pruning | drop | s |",
              "|---|---|---:|---|---:|---:|---|---:|---:|"]
    for n in names:
        if "params" not in info[n] or info[n]["params"] > MAX_PARAMS:
            continue
        cells = []
        for tool in ("prunekit", "torch-pruning"):
            r = recs.get((f"timm:{n}", tool))
            cell, drop = zc._cell(r)
            cells += [cell, drop, f"{r['prune_s']:.2f}" if r and "prune_s" in r else ""]
        if any(cells):
            lines.append(f"| `{n}` | {info[n]['family']} | {info[n]['params'] / 1e6:.1f} M | " + " | ".join(cells) + " |")
    md.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true", help="every timm model (default: a fixed sample)")
    ap.add_argument("--sample", type=int, default=SAMPLE, help="models in the default sample")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--tools", default="torch-pruning,prunekit")
    ap.add_argument("--limit-s", type=float, default=180.0, help="per model and tool, seconds")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    import timm

    names = sorted(timm.list_models())
    chosen = choose(names, None if args.all else args.sample, args.seed)
    info = meta_params(chosen, RESULTS / "timm_params.json")
    stem = "timm_all" if args.all else "timm_sample"
    jsonl, md = RESULTS / f"{stem}.jsonl", RESULTS / f"{stem}.md"
    runnable = [n for n in chosen if "params" in info[n] and info[n]["params"] <= MAX_PARAMS]
    if not args.report_only:
        tools = [t.strip() for t in args.tools.split(",") if t.strip()]
        zc._FAMILIES.update({f"timm:{n}": f"timm:{info[n]['family']}" for n in runnable})
        os.environ["ZOO_EQUIVALENCE"] = "1"  # the workers check each pruned model against its masked twin
        zc.run_all(tools, [f"timm:{n}" for n in runnable], jsonl, args.limit_s, threads=1)
    command = "nice -n 10 python benchmarks/timm_sweep.py --all" if args.all else \
        f"python benchmarks/timm_sweep.py --sample {args.sample} --seed {args.seed}"
    write_markdown(jsonl, md, chosen, info, command)
    print(f"wrote {md}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
