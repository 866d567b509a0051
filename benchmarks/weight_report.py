"""Print the Markdown tables of benchmarks/results/weight.md from the runs of the weight benchmarks.

Reads runs/weight_lenet300.cells/*.json (benchmarks/weight_bench.py), runs/weight_init.jsonl
(benchmarks/weight_init.py), runs/weight_sparse_paired.json or runs/weight_sparse.json
(benchmarks/weight_sparse.py [--paired]) and
runs/weight_mechanism.json (benchmarks/weight_mechanism.py); whatever is missing is skipped.

Usage: python benchmarks/weight_report.py [--runs runs]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics


def ms(values):
    values = [100 * v for v in values]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def grid(runs):
    if not os.path.exists(f"{runs}/weight_lenet300.cells/baseline.json"):
        return
    base = json.load(open(f"{runs}/weight_lenet300.cells/baseline.json"))
    cells = [json.load(open(p)) for p in glob.glob(f"{runs}/weight_lenet300.cells/*.json") if "baseline" not in p]
    cells = [c for c in cells if c.get("fingerprint") == base["fingerprint"]]  # the current protocol only
    print(f"Dense baseline (`baselines/lenet300-fashion-mnist`): {100 * base['acc_base']:.2f}% test accuracy.\n")
    methods = sorted({c["method"] for c in cells})
    targets = sorted({c["target"] for c in cells})
    print("| method | " + " | ".join(t.replace("sparsity=", "") for t in targets) + " |")
    print("|---|" + "---:|" * len(targets))
    for m in methods:
        row = []
        for t in targets:
            accs = [c["acc_finetuned"] for c in cells if c["method"] == m and c["target"] == t]
            row.append(f"{ms(accs)} (n={len(accs)})" if accs else "—")
        print(f"| {m} | " + " | ".join(row) + " |")
    dc = [c for c in cells if c["method"] == "deep-compression" and "ratio" in c.get("info", {})]
    if dc:
        print("\nDeep Compression (bytes of the encoded stream, `prunekit.methods.deep_compression.encode`):\n")
        print("| sparsity | seeds | accuracy (%) | drop vs dense (pp) | dense bytes | compressed bytes | ratio |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for t in targets:
            rows = [c for c in dc if c["target"] == t]
            if rows:
                accs = [c["acc_finetuned"] for c in rows]
                drop = 100 * (base["acc_base"] - statistics.mean(accs))
                print(f"| {t.replace('sparsity=', '')} | {len(rows)} | {ms(accs)} | {drop:.2f} | "
                      f"{rows[0]['info']['dense_bytes']:,} | "
                      f"{statistics.mean(c['info']['compressed_bytes'] for c in rows):,.0f} | "
                      f"{statistics.mean(c['info']['ratio'] for c in rows):.1f}× |")


def init(runs):
    path = f"{runs}/weight_init.jsonl"
    if not os.path.exists(path):
        return
    table = {}
    for line in open(path):
        r = json.loads(line)
        table.setdefault((r["exp"], r["sparsity"]), []).append(r["accuracy"])
    print("\n| experiment | sparsity | test accuracy (%) | seeds |")
    print("|---|---:|---:|---:|")
    for (exp, s), accs in sorted(table.items()):
        print(f"| {exp} | {s} | {ms(accs)} | {len(accs)} |")


def sparse(runs):
    path = f"{runs}/weight_sparse_paired.json"  # `weight_sparse.py --paired`, preferred when present
    if not os.path.exists(path):
        path = f"{runs}/weight_sparse.json"
    if not os.path.exists(path):
        return
    rows = json.load(open(path))["rows"]
    print("\n| model | batch | sparsity | format | latency (ms) | dense (ms) | speed-up vs dense | weight bytes |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    dense = {(r["model"], r["batch"]): r["ms"] for r in rows if r["format"] == "dense"}
    for r in rows:
        if r["format"] == "file":
            continue
        print(f"| {r['model']} | {r['batch']} | {r['sparsity']} | {r['format']} | {r['ms']:.3f} | "
              f"{r.get('dense_ms', dense[(r['model'], r['batch'])]):.3f} | {r.get('speedup', 1.0):.2f}× | {r['weight_bytes']:,} |")
    print("\n| model | sparsity | dense file (bytes) | save_sparse file (bytes) | ratio |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        if r["format"] == "file":
            print(f"| {r['model']} | {r['sparsity']} | {r['dense_file_bytes']:,} | {r['sparse_file_bytes']:,} | "
                  f"{r['ratio']:.2f}× |")


def mechanism(runs):
    path = f"{runs}/weight_mechanism.json"
    if not os.path.exists(path):
        return
    d = json.load(open(path))
    print("\n| model | mechanism | ms / step | overhead vs dense | state_dict keys | pruned stored weights exactly 0 |")
    print("|---|---|---:|---:|---:|---|")
    for m, rows in d["results"].items():
        for k, r in rows.items():
            print(f"| {m} | {k} | {r['ms_per_step']:.2f} | {100 * r['overhead']:+.1f}% | {len(r['state_dict_keys'])} | "
                  f"{'—' if r['stored_pruned_zero'] is None else r['stored_pruned_zero']} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="runs")
    args = ap.parse_args()
    for section in (grid, init, sparse, mechanism):
        section(args.runs)


if __name__ == "__main__":
    main()
