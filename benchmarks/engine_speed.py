"""Speed and memory of the structural engine next to Torch-Pruning.

For each model and tool a fresh subprocess builds the model, then times one "analyse + prune 50%" call
(prunekit: ``pk.prune_(model, example_inputs=x, sparsity=0.5, ignore=heads)``; Torch-Pruning 1.6:
``MetaPruner(model, x, MagnitudeImportance(p=2), pruning_ratio=0.5, ignored_layers=heads).step()``) and
the peak extra resident memory of that call: the peak RSS (``VmHWM``, reset just before the call through
``/proc/self/clear_refs``) minus the RSS just before it. Python's tracemalloc cannot see torch's
allocations, hence RSS. Results go to a JSONL file (resumable) and a Markdown table.

Usage (from the repository root):
    nice -n 10 python benchmarks/engine_speed.py            # main models + resnet depth sweep
    python benchmarks/engine_speed.py --report-only
"""
from __future__ import annotations

import argparse
import json
import statistics
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.zoo_coverage import engine_version  # noqa: E402 (one definition for both benchmarks)
RESULTS = ROOT / "benchmarks" / "results"
TOOLS = ("prunekit", "torch-pruning")
MAIN = ("resnet50", "vit_b_16", "bert-base", "llama-1b")
DEPTH = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
COMMAND = "python benchmarks/engine_speed.py --repeat 3"


def build(name: str):
    """(model, example_inputs, ignore, dtype name) for a benchmark model, randomly initialised."""
    import torch

    if name.startswith(("resnet", "vit_")):
        import torchvision

        model = torchvision.models.get_model(name, weights=None).eval()
        ignore = ["fc"] if name.startswith("resnet") else ["heads.head"]
        return model, (torch.randn(1, 3, 224, 224),), ignore, "float32"
    import transformers

    if name == "bert-base":
        cfg = transformers.BertConfig()  # the BERT-base shape: 12 layers, hidden 768, 12 heads, FFN 3072
        model = transformers.BertForSequenceClassification(cfg).eval()
        ids = torch.randint(0, cfg.vocab_size, (1, 128))
        return model, {"input_ids": ids}, ["classifier"], "float32"
    if name == "llama-1b":
        # a TinyLlama-1.1B-shaped config: hidden 2048, 22 layers, FFN 5632, 32 query / 4 key-value heads
        cfg = transformers.LlamaConfig(hidden_size=2048, num_hidden_layers=22, intermediate_size=5632,
                                       num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                                       max_position_embeddings=2048, use_cache=False)
        torch.set_default_dtype(torch.bfloat16)  # 2.2 GB instead of 4.4 GB
        try:
            model = transformers.LlamaForCausalLM(cfg).eval()
        finally:
            torch.set_default_dtype(torch.float32)
        ids = torch.randint(0, cfg.vocab_size, (1, 32))
        return model, {"input_ids": ids}, ["lm_head"], "bfloat16"
    raise ValueError(f"unknown benchmark model {name!r}; choose from {', '.join(MAIN + DEPTH)}")


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def measure_one(name: str, tool: str, threads: int) -> dict:
    import gc

    import torch

    torch.set_num_threads(threads)
    model, inputs, ignore, dtype = build(name)
    n_params = sum(p.numel() for p in model.parameters())
    model_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    if tool == "torch-pruning":
        import torch_pruning as tp  # imported before the measured call, like prunekit below
    else:
        import prunekit as pk
        # the engine's modules are imported lazily on first use; import them here, as `import torch_pruning`
        # does for Torch-Pruning, so the timed call measures the work and not module loading
        import prunekit.api  # noqa: F401
        import prunekit.criteria  # noqa: F401
        import prunekit.graph  # noqa: F401
        import prunekit.graph.rules  # noqa: F401
        import prunekit.surgery.hf_config  # noqa: F401
        import prunekit.surgery.mha  # noqa: F401
        import numpy.ma  # noqa: F401 (numpy loads it on the first np.unique call)
    gc.collect()
    peak_reset = _reset_peak()
    rss0 = _status_kb("VmRSS")
    t0 = time.perf_counter()
    if tool == "prunekit":
        pk.prune_(model, example_inputs=inputs, sparsity=0.5, ignore=ignore)
    else:
        modules = dict(model.named_modules())
        pruner = tp.pruner.MetaPruner(model, example_inputs=inputs, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=0.5, ignored_layers=[modules[n] for n in ignore])
        pruner.step()
    seconds = time.perf_counter() - t0
    hwm = _status_kb("VmHWM")
    n_after = sum(p.numel() for p in model.parameters())
    return {"model": name, "tool": tool, "params": n_params, "params_after": n_after, "dtype": dtype,
            "model_mb": round(model_bytes / 2**20, 1), "seconds": round(seconds, 3),
            "peak_extra_mb": round((hwm - rss0) / 1024, 1) if peak_reset else None,
            "extra_over_model": round((hwm - rss0) * 1024 / model_bytes, 3) if peak_reset else None,
            "n_layers": sum(1 for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))),
            "threads": threads}


def load_all(path: Path, engine: str | None = None, fallback: bool = True) -> dict:
    """(model, tool) -> every record of that pair, in file order; prunekit records only from the engine
    commit ``engine`` (default: the one of the last prunekit record) when records carry one.

    Torch-Pruning records count only when they were made side by side with those prunekit records: from
    the first of them on in the file (each invocation appends one record per model and tool). With
    ``fallback``, a model without such a record keeps its older Torch-Pruning records."""
    rows = []
    if path.exists():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if engine is None:
        engines = [r["engine"] for r in rows if r.get("tool") == "prunekit" and "engine" in r]
        engine = engines[-1] if engines else None
    start = next((i for i, r in enumerate(rows) if r["tool"] == "prunekit" and (engine is None
                                                                               or r.get("engine") == engine)),
                 len(rows))
    recs: dict = {}
    older: dict = {}
    for i, r in enumerate(rows):
        if r["tool"] == "prunekit" and engine is not None and r.get("engine") != engine:
            continue
        (recs if r["tool"] == "prunekit" or i >= start else older).setdefault((r["model"], r["tool"]), []).append(r)
    if fallback:
        for key, rs in older.items():
            recs.setdefault(key, rs)
    return recs


def load(path: Path) -> dict:
    """(model, tool) -> one summary record: the fastest repetition's time (the least disturbed by other jobs
    on a shared machine), the largest peak memory of all repetitions, and how many repetitions there were."""
    out = {}
    for key, rs in load_all(path).items():
        ok = [r for r in rs if "seconds" in r]
        if not ok:
            out[key] = rs[-1]
            continue
        best = dict(min(ok, key=lambda r: r["seconds"]))
        mems = [r for r in ok if r.get("peak_extra_mb") is not None]
        if mems:
            worst = max(mems, key=lambda r: r["peak_extra_mb"])
            best.update(peak_extra_mb=worst["peak_extra_mb"], extra_over_model=worst["extra_over_model"])
        best["reps"] = len(ok)
        best["median_s"] = statistics.median(r["seconds"] for r in ok)
        out[key] = best
    return out


def write_markdown(path: Path, md: Path) -> None:
    recs = load(path)
    engines = sorted({r.get("engine", "unrecorded") for (m, t), r in recs.items() if t == "prunekit"})
    lines = ["# Structural engine: speed and memory next to Torch-Pruning", "",
             f"prunekit engine commit: {', '.join(engines) or 'none'}; Torch-Pruning 1.6.1.", "",
             f"Produced by `{COMMAND}` (one fresh subprocess per model and tool, one CPU thread), rendered from"
             " `benchmarks/results/engine_speed.jsonl` by `python benchmarks/engine_speed.py --report-only`.",
             "Time = wall time of one analyse + prune-50% call with the output head ignored; peak extra ="
             " peak RSS during that call minus RSS before it (it includes the activations of the traced forward)."
             " Torch-Pruning's times come from the same invocations as prunekit's (side by side)."
             " With several repetitions (`--repeat N`, each in a fresh process) the table shows the fastest time"
             " and the largest peak memory. The CPUs are shared with other jobs, so times carry noise of the"
             " order of tens of percent.", "",
             "## Main models", "",
             "| model | params | dtype | model MB | params after pk / TP | runs pk / TP | prunekit s | Torch-Pruning s |"
             " time ratio pk/TP, fastest (median) | prunekit peak extra MB (x model) | Torch-Pruning peak extra MB (x model) |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def row(name):
        pk_r, tp_r = recs.get((name, "prunekit")), recs.get((name, "torch-pruning"))
        any_r = pk_r or tp_r
        if any_r is None:
            return None

        def t(r):
            return "not run" if r is None else (f"{r['seconds']:.2f}" if "seconds" in r else f"fail ({r['error']})")

        def mem(r):
            if r is None or r.get("peak_extra_mb") is None:
                return ""
            return f"{r['peak_extra_mb']:.0f} ({r['extra_over_model']:.2f}x)"

        ratio = (f"{pk_r['seconds'] / tp_r['seconds']:.2f} ({pk_r['median_s'] / tp_r['median_s']:.2f})"
                 if pk_r and tp_r and "median_s" in pk_r and "median_s" in tp_r else "")
        after = " / ".join(f"{r['params_after']:,}" if r and "params_after" in r else "-" for r in (pk_r, tp_r))
        runs = " / ".join(str(r.get("reps", 1)) if r else "0" for r in (pk_r, tp_r))
        return (f"| {name} | {any_r.get('params', 0):,} | {any_r.get('dtype', '')} | {any_r.get('model_mb', '')} |"
                f" {after} | {runs} | {t(pk_r)} | {t(tp_r)} | {ratio} | {mem(pk_r)} | {mem(tp_r)} |")

    lines += [r for r in map(row, MAIN) if r]
    lines += ["", "## Time against depth (torchvision ResNets, 224x224)", "",
              "| model | params | conv+linear layers | prunekit s | prunekit s / layer | Torch-Pruning s |"
              " Torch-Pruning s / layer |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name in DEPTH:
        pk_r, tp_r = recs.get((name, "prunekit")), recs.get((name, "torch-pruning"))
        r = pk_r or tp_r
        if r is None:
            continue
        cells = []
        for x in (pk_r, tp_r):
            if x is None or "seconds" not in x:
                cells += ["not run" if x is None else "fail", ""]
            else:
                cells += [f"{x['seconds']:.2f}", f"{x['seconds'] / x['n_layers'] * 1000:.1f} ms"]
        lines.append(f"| {name} | {r.get('params', 0):,} | {r.get('n_layers', '')} | " + " | ".join(cells) + " |")
    lines += ["", reading(recs)]
    md.write_text("\n".join(lines) + "\n")


def reading(recs: dict) -> str:
    """One paragraph from the records: the time ratios against the aim of at most half, and the memory."""
    ratios, mems = {}, {}
    for name in MAIN:
        pk_r, tp_r = recs.get((name, "prunekit")), recs.get((name, "torch-pruning"))
        if pk_r and tp_r and "seconds" in pk_r and "seconds" in tp_r:
            ratios[name] = pk_r["seconds"] / tp_r["seconds"]
        if pk_r and pk_r.get("extra_over_model") is not None:
            mems[name] = pk_r["extra_over_model"]
    if not ratios:
        return "Reading: no model has both tools' times yet."
    medians = {n: recs[(n, "prunekit")]["median_s"] / recs[(n, "torch-pruning")]["median_s"] for n in ratios
               if "median_s" in recs[(n, "prunekit")] and "median_s" in recs[(n, "torch-pruning")]}
    met = [n for n, v in ratios.items() if v <= 0.5]
    return ("Reading: prunekit's time is " + ", ".join(f"{v:.2f}x Torch-Pruning's on {n}" for n, v in ratios.items())
            + " (fastest run of each tool; on median runs " + ", ".join(f"{v:.2f}x on {n}" for n, v in medians.items())
            + "); the aim of at most half, judged on the fastest runs, is "
            + ("met on " + ", ".join(met) if met else "not met on any model")
            + ". Torch-Pruning traces one forward with autograd. prunekit traces one forward without the"
            " arithmetic of weight-reading convs and matmuls (the fast trace, docs/engine.md), then runs the"
            " pruned model once the same way, which validates the result's shapes and confirms the trace (with"
            " real values only when a tensor's origin was unknown, which none of these models has); for Hugging"
            " Face models it also rebuilds the config on the meta device. Its peak extra memory is at most "
            f"{max(mems.values()):.2f}x the model's size (aim: 1.2x)." + _depth_reading(recs))


def _depth_reading(recs: dict) -> str:
    """How time per conv/linear layer changes from the shallowest to the deepest ResNet, per tool."""
    parts = []
    for tool in TOOLS:
        per = [(n, r["seconds"] / r["n_layers"]) for n in DEPTH
               if (r := recs.get((n, tool))) is not None and "seconds" in r]
        if len(per) >= 2:
            (a, pa), (b, pb) = per[0], per[-1]
            parts.append(f"{tool} {pa * 1000:.1f} ms per layer on {a}, {pb * 1000:.1f} ms on {b}")
    return (" Time per conv/linear layer: " + "; ".join(parts) + ".") if parts else ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "TOOL"), help=argparse.SUPPRESS)
    # the ~1B model last: the cheap rows come first if the run is cut short
    ap.add_argument("--models", default=",".join(dict.fromkeys(MAIN[:3] + DEPTH + MAIN[3:])))
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1, help="repetitions per model and tool (fresh processes)")
    ap.add_argument("--limit-s", type=float, default=900.0, help="per model and tool, seconds")
    ap.add_argument("--jsonl", default=str(RESULTS / "engine_speed.jsonl"))
    ap.add_argument("--md", default=str(RESULTS / "engine_speed.md"))
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(measure_one(args.one[0], args.one[1], args.threads)), flush=True)
        return 0
    jsonl, md = Path(args.jsonl), Path(args.md)
    if not args.report_only:
        engine = engine_version()
        done = load_all(jsonl, engine, fallback=False)
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(args.threads))
        for name in args.models.split(","):
            for tool in args.tools.split(","):
                if len(done.get((name, tool), [])) >= args.repeat:
                    continue
                t0 = time.perf_counter()
                try:
                    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one", name, tool,
                                        "--threads", str(args.threads)], capture_output=True, text=True,
                                       timeout=args.limit_s, env=env, cwd=str(ROOT))
                    out = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
                    if out:
                        rec = json.loads(out[-1][7:])
                    else:
                        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
                        rec = {"model": name, "tool": tool, "error": f"exit {p.returncode}: {tail[:200]}"}
                except subprocess.TimeoutExpired:
                    rec = {"model": name, "tool": tool, "error": f"no result within {args.limit_s:.0f} s"}
                rec["wall_s"] = round(time.perf_counter() - t0, 1)
                if tool == "prunekit":
                    rec["engine"] = engine
                with jsonl.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(json.dumps(rec), flush=True)
    write_markdown(jsonl, md)
    print(f"wrote {md}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
