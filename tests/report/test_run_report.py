import json

import pytest

from prunekit.errors import ConfigError
from prunekit.report import render_run_markdown, summary_rows, write_run_report


def _report():
    layers = {f"layer{i}.conv": {"width_before": 16 * (1 + i // 3), "width_after": 8 * (1 + i // 3),
                                 "sparsity": 0.1 * i} for i in range(7)}
    return {
        "recipe": {"model": "resnet20", "data": "fashion-mnist", "target": "macs=0.5", "finetune_epochs": 2,
                   "subset": 1000, "seed": 0},
        "method": {"id": "l1-filter", "via": "method"},
        "before": {"accuracy": 0.91, "params": 272474, "macs": 41_000_000, "latency_ms": 2.0},
        "after": {"accuracy": 0.905, "params": 140000, "macs": 20_400_000, "latency_ms": 1.2},
        "stages": {"baseline": 0.91, "after prune": 0.5, "after BN recalibration": 0.85, "after fine-tune": 0.905},
        "per_layer": layers,
        "history": [{"epoch": 0, "loss": 0.6, "accuracy": 0.8, "val_accuracy": 0.85},
                    {"epoch": 1, "loss": 0.4, "accuracy": 0.88, "val_accuracy": 0.9}],
        "sensitivity": {"layer1.conv": [[0.0, 0.91], [0.5, 0.8], [0.9, 0.3]],
                        "layer2.conv": [[0.0, 0.91], [0.5, 0.88], [0.9, 0.6]]},
    }


def test_summary_rows_numbers():
    rows = {r[0]: r for r in summary_rows(_report())}
    assert rows["test accuracy"][1:] == ("91.00%", "90.50%", "-0.50 pts")
    assert rows["MACs"][3] == f"×{20.4 / 41:.3f}"
    assert rows["parameters"][1] == "272.5 k"


def test_write_run_report_files(tmp_path):
    made = write_run_report(_report(), tmp_path)
    assert set(made) == {"json", "markdown", "widths", "sparsity", "training", "sensitivity", "pareto"}
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["after"]["params"] == 140000
    assert data["files"]["widths"] == "widths.png"
    for key in ("widths", "sparsity", "training", "sensitivity", "pareto"):
        assert made[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "report.md").read_text()
    assert "| test accuracy | 91.00% | 90.50% | -0.50 pts |" in md
    assert "![widths](widths.png)" in md and "| `layer6.conv` | 48 | 24 | 60.0% |" in md


def test_missing_keys_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"missing keys \['after'\]"):
        render_run_markdown({"recipe": {}, "method": {}, "before": {}})


def test_per_layer_telemetry_shows_its_range_not_every_layer():
    from prunekit.report.run import format_value

    per_layer = {f"model.layers.{i}.mlp.up_proj.weight": 0.5 + 0.01 * i for i in range(6)}
    assert format_value(per_layer) == "6 layers, 0.5 to 0.55"
    assert format_value({"a": 1, "b": 2}) == "{'a': 1, 'b': 2}"  # short dicts stay whole
    mixed = {f"l{i}": ("x" if i else 1) for i in range(5)}
    assert format_value(mixed).endswith("… (5 entries)")
