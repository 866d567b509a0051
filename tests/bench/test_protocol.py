"""The grid runner on a tiny synthetic budget: resumable, same MACs target for prunekit and Torch-Pruning."""
import json

import pytest

from prunekit.bench import BenchGrid, run_grid

pytest.importorskip("torch_pruning")


def _grid(tmp_path, **kw):
    base = dict(name="tiny", model="resnet20", data="synthetic", data_options={"n_train": 192, "n_test": 64},
                baseline=None, methods=("criterion:l1", "tp:l1"), targets=("macs=0.5",), seeds=(0, 1),
                finetune_epochs=1, lr=0.05, batch_size=64, subset=None, calib_batches=1, latency=False,
                out=str(tmp_path / "res" / "tiny"))
    base.update(kw)
    return BenchGrid(**base)


def test_grid_resumes_and_aggregates(tmp_path):
    grid = _grid(tmp_path)
    first = run_grid(grid, limit=2, progress=False)
    assert (first["done"], first["ran"], first["remaining"]) == (2, 2, 2)
    cells_dir = tmp_path / "res" / "tiny.cells"
    done = sorted(p.name for p in cells_dir.glob("macs*.json"))
    assert done == ["macs_0.5__criterion_l1__s0.json", "macs_0.5__criterion_l1__s1.json"]
    stamp = {p: p.stat().st_mtime_ns for p in cells_dir.glob("macs*.json")}
    second = run_grid(grid, progress=False)
    assert (second["done"], second["ran"], second["remaining"]) == (4, 2, 0)
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())  # finished cells were not rerun

    report = json.loads((tmp_path / "res" / "tiny.json").read_text())
    assert len(report["cells"]) == 4 and len(report["rows"]) == 2
    for cell in report["cells"]:
        # both tools land on the same budget, counted by the same counter
        assert 0.40 <= cell["macs"] / cell["macs_base"] <= 0.50, cell["method"]
        for key in ("acc_pruned", "acc_recal", "acc_finetuned"):
            assert 0.0 <= cell[key] <= 1.0
    rows = {r["method"]: r for r in report["rows"]}
    assert rows["tp:l1"]["source"] == "torch-pruning" and rows["criterion:l1"]["source"] == "prunekit"
    md = (tmp_path / "res" / "tiny.md").read_text()
    assert "| macs=0.5 | prunekit | criterion:l1 | 2 |" in md and "| macs=0.5 | torch-pruning | tp:l1 | 2 |" in md
    assert (tmp_path / "res" / "tiny.png").read_bytes()[:4] == b"\x89PNG"


def test_changed_protocol_reruns_cells(tmp_path):
    grid = _grid(tmp_path, methods=("criterion:l1",), seeds=(0,))
    assert run_grid(grid, progress=False)["ran"] == 1
    assert run_grid(grid, progress=False)["ran"] == 0
    changed = _grid(tmp_path, methods=("criterion:l1",), seeds=(0,), lr=0.01)
    assert run_grid(changed, progress=False)["ran"] == 1


def test_reverse_worker_and_report_cover_every_finished_cell(tmp_path):
    grid = _grid(tmp_path, methods=("criterion:l1", "criterion:l2"), seeds=(0,))
    back = run_grid(grid, limit=1, reverse=True, progress=False)
    assert (back["ran"], back["done"]) == (1, 1)
    assert [p.name for p in (tmp_path / "res" / "tiny.cells").glob("macs*.json")] == ["macs_0.5__criterion_l2__s0.json"]
    forward = run_grid(grid, progress=False)
    assert (forward["ran"], forward["done"], forward["remaining"]) == (1, 2, 0)
    assert len(json.loads((tmp_path / "res" / "tiny.json").read_text())["cells"]) == 2
