"""Latency targets, shown (issue 17 item 2): uniform widths at a MACs target against widths searched under
the latency they measure, on torchvision's mobilenet_v2 (random weights, batch 1, CPU, eager PyTorch).

1. The latency table (:mod:`prunekit.measure.latency_table`): every conv / linear / BatchNorm layer timed
   alone at kept fractions ``--grid`` of its widths, ``--threads`` thread(s), ``--statistic`` of ``--runs``
   timed forwards after ``--warmup``; cached (and resumed) at ``--table``.
2. (a) uniform: ``Subnets.uniform_at("macs=M")`` (pk.plan's uniform L1 allocation, channels in units of
   ``--round-to``, the classifier kept) for each M in ``--macs``; its latency measured.
3. (b) searched: under ``latency=L`` with L the latency ratio (a) measured, the search block's random strategies
   (EagleEye's sampler, U(0, 0.8) per segment, ``--candidates`` feasible ones under the table's prediction),
   the one keeping the most MACs chosen (weights are random: kept MACs stand in for capacity). Its latency
   measured. (b') the same with L = the table's prediction for (a): the table's error on (a) corrects the
   limit (ours), so (b') should land at the latency (a) measured.
4. Every model is timed alternately with the dense one (``--pairs`` rounds), so both see the same background
   load; the table's prediction error is each model's predicted / measured latency ratio - 1.

Reported per M: MAC ratio (dense / pruned MACs), latency ratio (dense / pruned measured), their quotient
("speed-up per MAC reduction", 1.0 = latency falls as fast as MACs), for (a) and (b); and the table's error.
Results: ``--out`` (JSON) and a Markdown table beside it.

Usage: nice python benchmarks/latency_search.py [--size 224 --macs 0.5 0.25]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from prunekit.allocate.search import SearchBudget, random_ratios, run_search, sample_feasible
from prunekit.api import Subnets
from prunekit.measure.latency_table import LatencyModel, LatencyTable, time_forward

COMMAND = "nice python benchmarks/latency_search.py"
KINDS = ("uniform", "searched", "searched_corrected", "searched_checked")


def paired(dense, pruned, x, a) -> tuple[float, float]:
    """The ``--statistic`` of the dense and the pruned model's latency, timed in alternating rounds."""
    d, p = [], []
    kw = dict(warmup=1, runs=a.runs, threads=a.threads, statistic=a.statistic, clock=a.clock, backend=a.backend)
    for _ in range(a.pairs):
        d.append(time_forward(dense, x, **kw))
        p.append(time_forward(pruned, x, **kw))
    return float(np.median(d)), float(np.median(p))


def main():
    import torchvision

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--macs", type=float, nargs="+", default=[0.5, 0.25])
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--candidates", type=int, default=300)
    ap.add_argument("--grid", type=float, nargs="+", default=[0.125, 0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--statistic", default="median", choices=["median", "p10"])
    ap.add_argument("--clock", default="cpu", choices=["wall", "cpu"],
                    help="cpu: the thread's CPU time (on a machine shared with other processes, wall time counts "
                         "their slices); wall: elapsed time")
    ap.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"],
                    help="what is timed: eager PyTorch or the model exported to onnxruntime (one CPU session)")
    ap.add_argument("--checks", type=int, default=2, help="rounds of the measured check of row (c)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--table", default=None, help="latency table cache (default beside --out)")
    ap.add_argument("--out", default="benchmarks/results/latency_search.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    model = getattr(torchvision.models, a.model)(num_classes=1000).eval()
    x = torch.randn(1, 3, a.size, a.size)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = "" if a.backend == "torch" else f"_{a.backend}"
    table_path = a.table or str(out.with_name(f"latency_table_{a.model}_{a.size}{suffix}.json"))
    t0 = time.perf_counter()
    table = LatencyTable.build(model, x, table_path, grid=a.grid, warmup=a.warmup, runs=a.runs, threads=a.threads,
                               statistic=a.statistic, clock=a.clock, backend=a.backend)
    table_s = time.perf_counter() - t0
    head = {"mobilenet_v2": "classifier.1", "resnet18": "fc", "resnet50": "fc"}[a.model]
    sub = Subnets(model, x, ignore=[head], round_to=a.round_to)
    lat = LatencyModel(sub, table)
    space = sub.space
    rows = []
    for m in a.macs:
        uni = sub.uniform_at(f"macs={m}")
        d_ms, u_ms = paired(model, sub.pruned_copy(uni), x, a)
        lat_ratio = u_ms / d_ms  # measured latency kept by the uniform allocation
        cost = lat.cost

        def searched(limit):
            def propose(rng, _rec):
                w, n = sample_feasible(space, cost, limit, rng, lambda g: random_ratios(g, len(space), 0.8),
                                       window=0.03, tries=20_000)
                return w, {"draws": n}

            rec = run_search(space, propose, lambda w: sub.cost(w, "macs"), cost, limit,
                             SearchBudget(evaluations=a.candidates), seed=a.seed)
            best = rec.best()[0].widths if rec.trials else uni
            d2_ms, s_ms = paired(model, sub.pruned_copy(best), x, a)
            return {"limit": limit, "candidates": len(rec.trials), "macs_kept": sub.cost(best, "macs"),
                    "predicted": lat.cost(best), "measured": s_ms / d2_ms, "dense_ms": d2_ms, "ms": s_ms,
                    "widths": list(best)}

        row = {"macs_target": m, "latency_target": lat_ratio,
               "uniform": {"macs_kept": sub.cost(uni, "macs"), "predicted": lat.cost(uni),
                           "measured": u_ms / d_ms, "dense_ms": d_ms, "ms": u_ms, "widths": list(uni)},
               # (b) the table's prediction held to the measured latency of (a)
               "searched": searched(lat_ratio),
               # (b') the limit corrected by the table's error on (a): the prediction of (a) itself
               "searched_corrected": searched(lat.cost(uni))}
        # (c) pk.search's measured check: (b)'s choice timed; on a miss the limit is lowered by the miss and the
        # search runs again there, at most --checks times
        res, limit = row["searched"], lat_ratio
        for n in range(a.checks):
            if res["measured"] <= lat_ratio + 1e-9:
                break
            limit = limit * lat_ratio / res["measured"]
            res = searched(limit)
            res["checks"] = n + 1
        row["searched_checked"] = {**res, "checks": res.get("checks", 0)}
        for k in KINDS:
            r = row[k]
            r["mac_reduction"] = 1 / r["macs_kept"]
            r["speedup"] = 1 / r["measured"]
            r["speedup_per_mac_reduction"] = r["speedup"] / r["mac_reduction"]
            r["table_error"] = r["predicted"] / r["measured"] - 1
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("macs_target", "latency_target")} |
                         {k: {kk: v for kk, v in row[k].items() if kk != "widths"} for k in KINDS}),
              flush=True)
    # the table's error on whole models: uniform allocations at several ratios, each timed against the dense one
    checks = []
    for r in (0.25, 0.5, 0.75):
        w = space.uniform(r)
        d_ms, p_ms = paired(model, sub.pruned_copy(w), x, a)
        checks.append({"ratio": r, "predicted": lat.cost(w), "measured": p_ms / d_ms,
                       "error": lat.cost(w) / (p_ms / d_ms) - 1})
    res = {"model": a.model, "size": a.size, "threads": a.threads, "statistic": a.statistic, "clock": a.clock,
           "backend": a.backend,
           "runs": a.runs,
           "pairs": a.pairs, "round_to": a.round_to, "table_seconds": table_s, "table_dense_ms": table.dense_ms,
           "table_layers_ms": table.layers_ms(), "rows": rows, "checks": checks,
           "mean_abs_error": float(np.mean([abs(c["error"]) for c in checks] +
                                           [abs(r[k]["table_error"]) for r in rows for k in KINDS]))}
    out.write_text(json.dumps(res, indent=1))
    write_md(res, out.with_suffix(".md"), a)


def write_md(res: dict, path: Path, a) -> None:
    backend = {"torch": "eager PyTorch", "onnxruntime": "onnxruntime"}[res.get("backend", "torch")]
    flags = "" if a.backend == "torch" else f" --backend {a.backend} --out {a.out}"
    md = [f"# Latency targets: {res['model']} at {res['size']}x{res['size']}, batch 1, {res['threads']} thread(s), "
          f"{backend}", "",
          f"Command: `{COMMAND} --size {a.size} --macs {' '.join(map(str, a.macs))}{flags}` (the table is cached beside the "
          f"results and resumed). Latency = the {res['statistic']} of {res['runs']} timed forwards on the "
          f"{res['clock']} clock, dense and pruned "
          f"timed alternately ({res['pairs']} rounds); channels in units of {res['round_to']}, the classifier kept. "
          f"Table: {res['table_seconds']:.0f} s to measure (or load), dense {res['table_dense_ms']:.2f} ms of which "
          f"the timed layers explain {res['table_layers_ms']:.2f} ms.", "",
          "| MACs target | allocation | kept MACs | MAC reduction | measured latency kept | speed-up | "
          "speed-up / MAC reduction | table's prediction | error |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        for k, label in (("uniform", "(a) uniform at the MACs target"),
                         ("searched", f"(b) searched, predicted latency <= {r['searched']['limit']:.3f} (measured (a))"),
                         ("searched_corrected", f"(b') searched, predicted latency <= "
                                                f"{r['searched_corrected']['limit']:.3f} (predicted (a))"),
                         ("searched_checked", f"(c) (b) with {r['searched_checked']['checks']} measured check(s), "
                                              f"predicted latency <= {r['searched_checked']['limit']:.3f}")):
            v = r[k]
            md.append(f"| {r['macs_target']} | {label} | {v['macs_kept']:.3f} | {v['mac_reduction']:.2f}x | "
                      f"{v['measured']:.3f} | {v['speedup']:.2f}x | {v['speedup_per_mac_reduction']:.2f} | "
                      f"{v['predicted']:.3f} | {100 * v['table_error']:+.1f}% |")
    md += ["", "The table's error on uniform allocations (every segment at one pruning ratio):", "",
           "| pruning ratio | predicted latency kept | measured | error |", "|---|---|---|---|"]
    for c in res["checks"]:
        md.append(f"| {c['ratio']} | {c['predicted']:.3f} | {c['measured']:.3f} | {100 * c['error']:+.1f}% |")
    md += ["", f"Mean absolute prediction error over every model above: {100 * res['mean_abs_error']:.1f}%."]
    path.write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
