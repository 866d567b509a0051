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
    # after the cut with BN recal. first, after the fine-tune second, then MACs kept; mean ± std over 3 seeds
    assert "| macs=0.5 | prunekit | l1 | 3 | 70.00 ± 0.00 | 89.00 ± 1.00 | 0.488 |" in md
    assert made["pareto"].read_bytes()[:4] == b"\x89PNG"


def test_pareto_front_drops_dominated():
    pts = [{"macs": 10, "accuracy": 0.8}, {"macs": 12, "accuracy": 0.7}, {"macs": 20, "accuracy": 0.9},
           {"macs": 25, "accuracy": 0.85}]
    assert [(p["macs"], p["accuracy"]) for p in pareto_front(pts)] == [(10, 0.8), (20, 0.9)]


def test_columns_in_order_and_non_engaged_rows_flagged(tmp_path):
    cells = []
    for seed, engaged in ((0, True), (1, False), (2, True)):
        cells.append({"method": "sss", "source": "prunekit", "target": "macs=0.5", "seed": seed, "acc_pruned": 0.1,
                      "acc_recal": 0.6 + 0.1 * seed, "acc_finetuned": 0.8, "macs": 5e6, "macs_base": 1e7,
                      "params": 1e5, "params_base": 2e5, "nonzero_params": 1e5, "epochs_precut": 1.0,
                      "epochs_finetune": 1.0, "epochs_total": 2.0, "engaged": engaged,
                      "telemetry": {"gates_zero": 0.1 * seed}, "warnings": ["raise prune_epochs"] * (not engaged)})
        cells.append({"method": "criterion:random", "source": "prunekit", "target": "macs=0.5", "seed": seed,
                      "control": True, "acc_pruned": 0.1, "acc_recal": 0.5, "acc_finetuned": 0.75, "macs": 5e6,
                      "macs_base": 1e7, "params": 1e5, "params_base": 2e5, "nonzero_params": 1e5,
                      "epochs_precut": 0.0, "epochs_finetune": 2.0, "epochs_total": 2.0, "engaged": None})
    write_bench_report(cells, tmp_path / "g")
    md = (tmp_path / "g.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| target"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols[4].startswith("after the cut, BN recal.") and cols[5] == "after fine-tune (%)"
    assert cols[6:10] == ["MACs kept", "weights kept", "epochs: pre-cut + fine-tune = total", "engaged"]
    assert cols[10].startswith("telemetry")
    assert ("| macs=0.5 | prunekit | sss **(not engaged)** | 3 | 70.00 ± 10.00 | 80.00 ± 0.00 | 0.500 | 0.500 | "
            "1 + 1 = 2 | **NO** (1/3 seeds) | gates_zero=0.1 |") in md
    assert "| criterion:random (control) | 3 | 50.00 ± 0.00 | 75.00 ± 0.00 | 0.500 | 0.500 | 0 + 2 = 2 | — |" in md
    row = next(r for r in json.loads((tmp_path / "g.json").read_text())["rows"] if r["method"] == "sss")
    assert row["engaged"] is False and row["not_engaged_seeds"] == 1


def test_a_prefix_with_a_dot_keeps_it_and_leaves_the_neighbouring_files_alone(tmp_path):
    (tmp_path / "run-1.json").write_text("user data")  # what "run-1.2" with its ".2" cut off would overwrite
    made = write_bench_report(_cells(), tmp_path / "run-1.2", protocol={}, command="prunekit bench")
    assert made["json"] == tmp_path / "run-1.2.json" and made["markdown"] == tmp_path / "run-1.2.md"
    assert (tmp_path / "run-1.2.png").is_file() and "run-1.2.png" in (tmp_path / "run-1.2.md").read_text()
    assert (tmp_path / "run-1.json").read_text() == "user data"


def test_language_model_cells_add_perplexity_columns():
    from prunekit.report.bench import render_bench_markdown

    cells = []
    for seed, (cut, ft) in enumerate(((40.0, 30.0), (44.0, 32.0))):
        cells.append({"method": "l1", "source": "prunekit", "target": "macs=0.5", "seed": seed, "acc_base": 0.4,
                      "ppl_base": 25.0, "ppl_pruned": cut, "ppl_finetuned": ft, "acc_pruned": 0.2,
                      "acc_finetuned": 0.3, "params": 1e5, "macs": 5e6, "params_base": 2e5, "macs_base": 1e7})
    rows = aggregate_cells(cells)
    assert rows[0]["ppl_pruned_mean"] == 42.0 and rows[0]["ppl_finetuned_mean"] == 31.0
    md = render_bench_markdown(rows)
    assert "Baseline test perplexity 25.00" in md
    header = next(line for line in md.splitlines() if line.startswith("| target"))
    row = next(line for line in md.splitlines() if line.startswith("| macs=0.5"))
    cols = [c.strip() for c in header.split("|")]
    vals = [c.strip() for c in row.split("|")]
    assert len(cols) == len(vals)
    assert vals[cols.index("perplexity after the cut")] == f"42.00 ± {statistics.stdev([40.0, 44.0]):.2f}"
    assert vals[cols.index("perplexity after fine-tune")].startswith("31.00 ± ")
    image_md = render_bench_markdown(aggregate_cells(_cells()))  # image grids: no perplexity column
    assert "perplexity" not in image_md
