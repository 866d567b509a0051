import json
import statistics

from prunekit.report import aggregate_cells, write_bench_report
from prunekit.report.plots import pareto_front


def _cells():
    cells = []
    for method, source, base_acc in (("l1", "prunekit", 0.88), ("magnitude-l1", "torch-pruning", 0.87)):
        for target, macs in (("macs=0.5", 20e6), ("macs=0.25", 10e6)):
            for seed in range(3):
                cells.append({"method": method, "source": source, "target": target, "seed": seed,
                              "acc_base": 0.91, "acc_pruned": 0.3 + 0.01 * seed, "acc_recal": 0.7,
                              "acc_finetuned": base_acc - (0.05 if macs < 15e6 else 0) + 0.01 * seed,
                              "params": 1e5, "macs": macs, "params_base": 2.7e5, "macs_base": 41e6,
                              "latency_ms": 1.0, "latency_base_ms": 2.0})
    return cells


def test_aggregate_mean_std():
    rows = aggregate_cells(_cells())
    assert len(rows) == 4 and all(r["n"] == 3 for r in rows)
    row = next(r for r in rows if r["method"] == "l1" and r["target"] == "macs=0.5")
    assert abs(row["acc_finetuned_mean"] - 0.89) < 1e-12
    assert abs(row["acc_finetuned_std"] - statistics.stdev([0.88, 0.89, 0.90])) < 1e-12
    assert row["seeds"] == [0, 1, 2]


def test_write_bench_report(tmp_path):
    made = write_bench_report(_cells(), tmp_path / "grid", protocol={"fine-tune epochs": 1}, command="prunekit bench")
    data = json.loads((tmp_path / "grid.json").read_text())
    assert len(data["cells"]) == 12 and len(data["rows"]) == 4
    md = (tmp_path / "grid.md").read_text()
    assert "| macs=0.5 | prunekit | l1 | 3 | 31.00 ± 1.00 | 70.00 ± 0.00 | 89.00 ± 1.00 | 100.0 | 20.00 | 0.488 |" in md
    assert made["pareto"].read_bytes()[:4] == b"\x89PNG"


def test_pareto_front_drops_dominated():
    pts = [{"macs": 10, "accuracy": 0.8}, {"macs": 12, "accuracy": 0.7}, {"macs": 20, "accuracy": 0.9},
           {"macs": 25, "accuracy": 0.85}]
    assert [(p["macs"], p["accuracy"]) for p in pareto_front(pts)] == [(10, 0.8), (20, 0.9)]
