"""Whole-zoo coverage of structural pruning: prunekit next to Torch-Pruning, in the same run.

For every case of ``benchmarks/zoo.py`` and every tool, a worker subprocess builds the model, prunes it at
sparsity 0.5 with the output heads ignored, and checks the pass criterion (``zoo.run_case``). One worker
serves many models (imports are paid once); a model that crashes the worker or runs past the per-model time
limit is recorded as a failure and a fresh worker takes the next model. Results are appended to a JSONL
file as they come, so an interrupted run resumes where it stopped; the Markdown table is rewritten from the
JSONL at the end (or alone with ``--report-only``).

Usage (from the repository root):
    nice -n 10 python benchmarks/zoo_coverage.py --tools torch-pruning,prunekit
    python benchmarks/zoo_coverage.py --report-only
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TOOLS = ("torch-pruning", "prunekit")
COMMAND = "nice -n 10 python benchmarks/zoo_coverage.py --tools torch-pruning,prunekit --limit-s 120"


# ------------------------------------------------------------------ worker side
def worker(tool: str) -> None:
    """Read case names from stdin, one per line; write one ``RESULT <json>`` line per case."""
    import torch

    torch.set_num_threads(int(os.environ.get("ZOO_THREADS", "1")))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    from benchmarks import zoo

    cases = {c.name: c for c in zoo.all_cases()}
    engine = engine_version()
    for line in sys.stdin:
        name = line.strip()
        if not name:
            continue
        case = cases.get(name) or zoo.get(name)
        rec = zoo.run_case(case, tool, equivalence=os.environ.get("ZOO_EQUIVALENCE") == "1")
        if tool == "prunekit":
            rec["engine"] = engine
        sys.stdout.write("RESULT " + json.dumps(rec) + "\n")
        sys.stdout.flush()


def engine_version() -> str:
    """The last commit that touched the prunekit package ("unknown" outside a git checkout)."""
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%h", "--", "prunekit"], cwd=str(ROOT),
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ------------------------------------------------------------------ driver side
class Worker:
    def __init__(self, tool: str, threads: int):
        env = dict(os.environ, ZOO_THREADS=str(threads), PYTHONPATH=str(ROOT), YOLO_OFFLINE="1",
                   OMP_NUM_THREADS=str(threads))
        # the workers' stderr (warnings, tracebacks of crashes) goes to a log beside the system's temp files
        self.log = open(Path(tempfile.gettempdir()) / f"prunekit_zoo_worker_{tool}.log", "ab")
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", tool],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     env=env, cwd=str(ROOT), start_new_session=True)
        self.buf = b""

    def run(self, name: str, limit_s: float) -> dict | None:
        """The worker's record for ``name``; None on timeout or crash (the worker is then dead)."""
        self.proc.stdin.write((name + "\n").encode())
        self.proc.stdin.flush()
        deadline = time.monotonic() + limit_s
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                if line.startswith(b"RESULT "):
                    return json.loads(line[7:])
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                return None
            ready, _, _ = select.select([fd], [], [], min(left, 5.0))
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:  # the worker died
                    self.proc.wait()
                    return None
                self.buf += chunk

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


def load_records(path: Path) -> dict[tuple[str, str], dict]:
    recs: dict[tuple[str, str], dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                recs[(r["model"], r["tool"])] = r  # the last record of a (model, tool) pair wins
    return recs


def run_all(tools: list[str], names: list[str], jsonl: Path, limit_s: float, threads: int,
            redo_stale: bool = False, redo: tuple[str, ...] = ()) -> None:
    """Run every model with every tool, model by model (the tools side by side), skipping recorded pairs
    (with ``redo_stale``, prunekit records made with an older engine commit are run again)."""
    done = load_records(jsonl)
    engine = engine_version()

    def needed(n: str, t: str) -> bool:
        r = done.get((n, t))
        return r is None or n in redo or (redo_stale and t == "prunekit" and r.get("engine") != engine)

    todo = [(n, t) for n in names for t in tools if needed(n, t)]
    print(f"{len(todo)} of {len(names) * len(tools)} (model, tool) pairs to run", flush=True)
    workers: dict[str, Worker] = {}
    for i, (name, tool) in enumerate(todo):
        w = workers.get(tool)
        if w is None or w.proc.poll() is not None:
            w = workers[tool] = Worker(tool, threads)
        t0 = time.perf_counter()
        rec = w.run(name, limit_s)
        if rec is None:
            timed_out = time.perf_counter() - t0 >= limit_s - 1
            rec = {"model": name, "family": family_of(name), "tool": tool, "status": "fail",
                   "stage": "timeout" if timed_out else "crash",
                   "error_type": "Timeout" if timed_out else "WorkerCrash",
                   "error": f"no result within {limit_s:.0f} s" if timed_out
                   else f"worker exited with code {w.proc.returncode}",
                   "seconds": round(time.perf_counter() - t0, 1)}
            w.close()
            del workers[tool]
        with jsonl.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"[{tool}] {i + 1}/{len(todo)} {name}: {rec['status']} {rec.get('param_drop', '')} "
              f"{rec.get('error_type', '')} {rec.get('error', '')[:120]} ({rec['seconds']} s)", flush=True)
    for w in workers.values():
        w.close()


_FAMILIES: dict[str, str] = {}


def family_of(name: str) -> str:
    return _FAMILIES.get(name, name.split(":")[0])


def group_of(family: str) -> str:
    return "timm" if family.startswith("timm") else family


# ------------------------------------------------------------------ Markdown
def _cell(r: dict | None) -> tuple[str, str]:
    if r is None:
        return "not run", ""
    drop = f"{r['param_drop']:.1%}" if "param_drop" in r else ""
    if r["status"] == "pass":
        return "pass", drop
    reason = f"{r.get('stage', '')}: {r.get('error_type', '')}: {r.get('error', '')}"
    if r.get("op"):
        reason += f" (op {r['op']})"
    reason = reason.replace("|", "/").replace("\n", " ")[:160]
    return f"fail ({reason})", drop


def cause_of(r: dict) -> str:
    """A failure's cause with model-specific numbers and names blurred, so equal causes group together."""
    msg = r.get("error", "")
    msg = re.sub(r"'[^']*'", "'…'", msg)
    msg = re.sub(r"\d+", "N", msg)
    text = f"{r.get('stage', '')}: {r.get('error_type', '')}: {msg[:140]}"
    if r.get("op"):
        text += f" (op {r['op']})"
    return text.replace("|", "/")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs (shared), Python {platform.python_version()}"


def versions() -> str:
    out = []
    for mod in ("torch", "torchvision", "timm", "transformers", "torch_pruning", "ultralytics"):
        try:
            from importlib.metadata import version

            out.append(f"{mod.replace('_', '-')} {version(mod.replace('_', '-'))}")
        except Exception:
            out.append(f"{mod} (not installed)")
    return ", ".join(out)


def write_markdown(jsonl: Path, md: Path, names: list[str], limit_s: float) -> None:
    recs = load_records(jsonl)
    lines = [
        "# Structural-pruning coverage zoo: prunekit next to Torch-Pruning",
        "",
        f"Produced by `{COMMAND}` (per-model limit {limit_s:.0f} s, one thread per worker); after engine"
        " changes the prunekit column is refreshed with `python benchmarks/zoo_coverage.py --tools prunekit"
        " --redo-stale` (the Torch-Pruning column, same version, is kept). Rendered from"
        " `benchmarks/results/zoo.jsonl` by `python benchmarks/zoo_coverage.py --report-only`.",
        f"Machine: {machine()}. Versions: {versions()}; prunekit engine version(s) of the prunekit"
        f" column (the last commit that touched the package; timeouts record none): {', '.join(sorted({r.get('engine', 'unrecorded') for r in recs.values() if r['tool'] == 'prunekit'})) or 'none'}.",
        "",
        "Each model is built with random weights and small inputs (`benchmarks/zoo.py`), then pruned at"
        " sparsity 0.5 with its output heads ignored: prunekit with `pk.prune_(model, example_inputs=x,"
        " sparsity=0.5, ignore=heads)`, Torch-Pruning 1.6 with `MetaPruner(model, x,"
        " MagnitudeImportance(p=2), pruning_ratio=0.5, ignored_layers=heads)`. A model passes when pruning"
        " succeeds, the pruned model runs, every output keeps its shape (detection: all but the number of"
        " boxes) and the parameter count drops by at least 20%.",
        "",
    ]
    # summary per family group
    summary: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    only_tp, only_pk = [], []
    for n in names:
        fam = group_of(family_of(n))
        tp_r, pk_r = recs.get((n, "torch-pruning")), recs.get((n, "prunekit"))
        summary[fam]["models"] += 1
        for tool, r in (("tp", tp_r), ("pk", pk_r)):
            if r is not None:
                summary[fam][f"{tool}_run"] += 1
                summary[fam][f"{tool}_pass"] += r["status"] == "pass"
        if tp_r and tp_r["status"] == "pass" and pk_r and pk_r["status"] != "pass":
            only_tp.append(n)
        if pk_r and pk_r["status"] == "pass" and tp_r and tp_r["status"] != "pass":
            only_pk.append(n)
    lines += ["## Summary", "", "| family | models | prunekit pass / run | Torch-Pruning pass / run |",
              "|---|---:|---:|---:|"]
    total = collections.Counter()
    for fam in sorted(summary):
        s = summary[fam]
        total.update(s)
        lines.append(f"| {fam} | {s['models']} | {s['pk_pass']} / {s['pk_run']} | {s['tp_pass']} / {s['tp_run']} |")
    lines.append(f"| **all** | {total['models']} | {total['pk_pass']} / {total['pk_run']} | "
                 f"{total['tp_pass']} / {total['tp_run']} |")
    lines += ["", f"Models Torch-Pruning passes and prunekit fails ({len(only_tp)}): "
              + (", ".join(f"`{n}`" for n in only_tp) or "none") + ".",
              "", f"Models prunekit passes and Torch-Pruning fails ({len(only_pk)}): "
              + (", ".join(f"`{n}`" for n in only_pk) or "none") + ".", ""]
    passed = [n for n in names if (r := recs.get((n, "prunekit"))) and r["status"] == "pass" and r.get("trace")]
    real = [n for n in passed if recs[(n, "prunekit")]["trace"] == "real"]
    if passed:
        lines += [f"prunekit's `Report.trace` (docs/engine.md, the fast trace): {len(passed) - len(real)} of"
                  f" {len(passed)} passing models were planned on the fast trace; these fell back to a real"
                  f" trace ({len(real)}): " + (", ".join(f"`{n}`" for n in real) or "none") + ".", ""]
        checked = [n for n in passed if recs[(n, "prunekit")]["trace"] == "fast"
                   and recs[(n, "prunekit")].get("validation")]
        real_check = [n for n in checked if recs[(n, "prunekit")]["validation"] == "real"]
        if checked:
            n_fast = len(checked) - len(real_check)
            lines += [f"`Report.validation`: of {len(checked)} models planned on the fast trace, {n_fast}"
                      f" were confirmed by a forward of the pruned model without weight arithmetic; "
                      f"these had a tensor of unknown origin and were confirmed with real values ({len(real_check)}): "
                      + (", ".join(f"`{n}`" for n in real_check) or "none") + ".", ""]
    lines += ["## prunekit failures by cause", "", "| cause | models |", "|---|---|"]
    causes: dict[str, list[str]] = collections.defaultdict(list)
    for n in names:
        r = recs.get((n, "prunekit"))
        if r is not None and r["status"] != "pass":
            causes[cause_of(r)].append(n)
    for cause, models in sorted(causes.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"| {cause} | {len(models)}: " + ", ".join(f"`{m}`" for m in models) + " |")
    lines += [""]
    lines += ["## Per model", "", "| model | family | prunekit | params drop | Torch-Pruning | params drop |",
              "|---|---|---|---:|---|---:|"]
    for n in names:
        pk_cell, pk_drop = _cell(recs.get((n, "prunekit")))
        tp_cell, tp_drop = _cell(recs.get((n, "torch-pruning")))
        lines.append(f"| `{n}` | {family_of(n)} | {pk_cell} | {pk_drop} | {tp_cell} | {tp_drop} |")
    md.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", choices=TOOLS, help=argparse.SUPPRESS)
    ap.add_argument("--tools", default="torch-pruning,prunekit", help="comma-separated, run in this order")
    ap.add_argument("--only", default="", help="comma-separated case names or prefixes (tv:, timm:, hf:, ...)")
    ap.add_argument("--limit-s", type=float, default=120.0, help="per model and tool, seconds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jsonl", default=str(RESULTS / "zoo.jsonl"))
    ap.add_argument("--md", default=str(RESULTS / "zoo.md"))
    ap.add_argument("--redo-stale", action="store_true",
                    help="run prunekit again where its record was made with an older engine commit")
    ap.add_argument("--redo", default="", help="comma-separated case names to run again whatever is recorded")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0

    sys.path.insert(0, str(ROOT))
    from benchmarks import zoo

    cases = zoo.all_cases()
    # small models first, the big ones last, so a cut-short run still covers the most families
    cases.sort(key=lambda c: "big" in c.tags)
    _FAMILIES.update({c.name: c.family for c in cases})
    names = [c.name for c in cases]
    if args.only:
        keys = [k.strip() for k in args.only.split(",") if k.strip()]
        names = [n for n in names if any(n == k or (k.endswith(":") and n.startswith(k)) for k in keys)]
    jsonl, md = Path(args.jsonl), Path(args.md)
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        tools = [t.strip() for t in args.tools.split(",") if t.strip()]
        bad = [t for t in tools if t not in TOOLS]
        if bad:
            ap.error(f"--tools: unknown {bad}; choose from {', '.join(TOOLS)}")
        redo = tuple(n.strip() for n in args.redo.split(",") if n.strip())
        run_all(tools, names, jsonl, args.limit_s, args.threads, args.redo_stale, redo)
    all_names = [c.name for c in cases]
    write_markdown(jsonl, md, all_names, args.limit_s)
    print(f"wrote {md}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
