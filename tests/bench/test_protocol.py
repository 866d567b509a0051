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
        # both tools land on the same budget, counted by the same counter; Torch-Pruning within 1% of the target
        # (no method row at this target to match instead)
        kept = cell["macs"] / cell["macs_base"]
        if cell["method"] == "tp:l1":
            assert abs(kept / 0.5 - 1) <= 0.01 and cell["deps"]["goal"] == 0.5
        else:
            assert 0.40 <= kept <= 0.50
        for key in ("acc_pruned", "acc_recal", "acc_finetuned"):
            assert 0.0 <= cell[key] <= 1.0
    rows = {r["method"]: r for r in report["rows"]}
    assert rows["tp:l1"]["source"] == "torch-pruning" and rows["criterion:l1"]["source"] == "prunekit"
    md = (tmp_path / "res" / "tiny.md").read_text()
    assert "| macs=0.5 | prunekit | criterion:l1 (control) | 2 |" in md
    assert "| macs=0.5 | torch-pruning | tp:l1 (control) | 2 |" in md
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


def test_workers_share_the_grid_and_report_every_cell(tmp_path):
    grid = _grid(tmp_path, methods=("criterion:l1", "criterion:l2"), seeds=(0, 1))
    rep = run_grid(grid, workers=2, progress=False)
    assert (rep["done"], rep["ran"], rep["remaining"], rep["failed"]) == (4, 4, 0, 0)
    cells_dir = tmp_path / "res" / "tiny.cells"
    assert len(list(cells_dir.glob("macs*__s*.json"))) == 4
    assert not list(cells_dir.glob("*.claim"))  # every claim released
    again = run_grid(grid, workers=2, progress=False)
    assert (again["done"], again["ran"]) == (4, 0)


def test_keep_going_records_a_failed_cell_and_the_next_run_retries_it(tmp_path, monkeypatch):
    from prunekit.bench import protocol

    grid = _grid(tmp_path, methods=("criterion:l1", "criterion:l2"), seeds=(0,))
    real = protocol.run_cell

    def flaky(ctx, method, target, seed, base, progress=False, **kw):
        if method == "criterion:l2":
            raise RuntimeError("boom on l2")
        return real(ctx, method, target, seed, base, progress=progress, **kw)

    monkeypatch.setattr(protocol, "run_cell", flaky)
    with pytest.raises(RuntimeError, match="boom"):  # without keep_going a failure stops the run
        run_grid(grid, progress=False)
    rep = run_grid(grid, progress=False, keep_going=True)
    assert (rep["done"], rep["failed"], rep["remaining"]) == (1, 1, 1)
    failed = json.loads((tmp_path / "res" / "tiny.cells" / "macs_0.5__criterion_l2__s0.failed.json").read_text())
    assert failed["error"] == "RuntimeError: boom on l2" and "Traceback" in failed["traceback"]
    assert "criterion:l2 @ macs=0.5 seed 0: RuntimeError: boom on l2" in (tmp_path / "res" / "tiny.md").read_text()
    monkeypatch.setattr(protocol, "run_cell", real)
    rep = run_grid(grid, progress=False)
    assert (rep["done"], rep["ran"], rep["failed"]) == (2, 1, 0)
    assert not (tmp_path / "res" / "tiny.cells" / "macs_0.5__criterion_l2__s0.failed.json").exists()


def test_claims_are_exclusive_and_a_dead_process_claim_is_taken_over(tmp_path):
    import socket
    import subprocess
    import sys

    from prunekit.bench.protocol import _claim

    path = tmp_path / "c.claim"
    assert _claim(path) and not _claim(path)  # held by this (live) process
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_text(f"{socket.gethostname()} {int(dead.stdout)}")
    assert _claim(path)
    path.write_text(f"another-host {int(dead.stdout)}")  # another machine's claim is never taken over
    assert not _claim(path)


def test_workers_refuse_limit_reverse_and_fresh(tmp_path):
    from prunekit.errors import ConfigError

    grid = _grid(tmp_path)
    for kw in ({"limit": 1}, {"reverse": True}, {"resume": False}, ):
        with pytest.raises(ConfigError, match="workers=2 shares the grid"):
            run_grid(grid, workers=2, progress=False, **kw)
    with pytest.raises(ConfigError, match="workers=0 must be a positive int"):
        run_grid(grid, workers=0, progress=False)


def test_a_worker_does_not_retry_a_cell_that_failed_in_the_same_run(tmp_path, monkeypatch):
    from prunekit.bench import protocol

    grid = _grid(tmp_path, methods=("criterion:l2",), seeds=(0,))
    calls = []

    def failing(ctx, method, target, seed, base, progress=False, **kw):
        calls.append(method)
        raise RuntimeError("no device")

    monkeypatch.setattr(protocol, "run_cell", failing)
    (tmp_path / "res" / "tiny.cells").mkdir(parents=True)
    waiting = grid.waits("criterion:l2")  # a control row: the workers' second phase
    assert protocol._worker(grid, None, True, 1, "run-a", waiting) == 0
    assert protocol._worker(grid, None, True, 1, "run-a", waiting) == 0  # a second worker of the same run skips it
    assert len(calls) == 1
    assert protocol._worker(grid, None, True, 1, "run-b", waiting) == 0  # the next run tries it again
    assert len(calls) == 2


def test_cells_record_the_machine_they_ran_on(tmp_path):
    grid = _grid(tmp_path, methods=("criterion:l1",), seeds=(0,))
    run_grid(grid, progress=False)
    cell = json.loads((tmp_path / "res" / "tiny.cells" / "macs_0.5__criterion_l1__s0.json").read_text())
    assert "CPU cores, torch " in cell["machine"]
    assert cell["machine"] in json.loads((tmp_path / "res" / "tiny.json").read_text())["protocol"]["machine"]


def test_method_variants_run_with_their_inline_options(tmp_path):
    grid = _grid(tmp_path, methods=("dropnet", "dropnet[order=random]"), seeds=(0,), targets=("macs=0.5",),
                 prune_epochs=1)
    rep = run_grid(grid, progress=False)
    assert (rep["done"], rep["remaining"]) == (2, 0)
    cells = {c["method"]: c for c in json.loads((tmp_path / "res" / "tiny.json").read_text())["cells"]}
    assert set(cells) == {"dropnet", "dropnet[order=random]"}
    # the variant really ran with its option: a random drop order keeps a different network than DropNet's
    assert cells["dropnet"]["acc_pruned"] != cells["dropnet[order=random]"]["acc_pruned"] or \
        cells["dropnet"]["params"] != cells["dropnet[order=random]"]["params"]
    assert (tmp_path / "res" / "tiny.cells" / "macs_0.5__dropnet_order_random___s0.json").is_file()


def test_bad_variants_are_refused_before_anything_runs(tmp_path):
    from prunekit.errors import ConfigError

    with pytest.raises(ConfigError, match="option of method 'dropnet'"):
        run_grid(_grid(tmp_path, methods=("dropnet[odrer=random]",)), progress=False)
    with pytest.raises(ConfigError, match=r"id\[option=value"):
        run_grid(_grid(tmp_path, methods=("dropnet[random]",)), progress=False)
    with pytest.raises(ConfigError, match="peer tools take no variant options"):
        run_grid(_grid(tmp_path, methods=("tp:l1[x=1]",)), progress=False)


def test_equal_budget_gives_control_rows_the_method_rows_pre_cut_training(tmp_path):
    """slimming trains 2 epochs before the cut; random and Torch-Pruning get 2 more fine-tune epochs, so every
    row's total is 2 + 1 = 3 epochs, counted in optimizer steps; with equal_budget off they stay at 1."""
    grid = _grid(tmp_path, methods=("slimming", "criterion:random", "tp:random"), seeds=(0,), prune_epochs=2)
    run_grid(grid, progress=False)
    cells = {c["method"]: c for c in json.loads((tmp_path / "res" / "tiny.json").read_text())["cells"]}
    spe = cells["slimming"]["steps_per_epoch"]
    assert spe == 3  # 192 images, batches of 64
    assert cells["slimming"]["precut_steps"] == 2 * spe and cells["slimming"]["epochs_precut"] == 2.0
    assert cells["slimming"]["epochs_total"] == 3.0 and cells["slimming"]["extra_epochs"] == 0.0
    for control in ("criterion:random", "tp:random"):
        c = cells[control]
        assert c["control"] and c["epochs_precut"] == 0.0 and c["extra_epochs"] == 2.0
        assert c["finetune_steps"] == 3 * spe and c["epochs_total"] == cells["slimming"]["epochs_total"]
        assert c["deps"]["budget_from"] == "slimming"
    md = (tmp_path / "res" / "tiny.md").read_text()
    assert "| 2 + 1 = 3 |" in md and "| 0 + 3 = 3 |" in md
    assert "Budget at macs=0.5: control rows (criterion:random, tp:random) fine-tune 1 + 2 epochs" in md

    off = _grid(tmp_path, methods=("slimming", "criterion:random"), seeds=(0,), prune_epochs=2, equal_budget=False,
                out=str(tmp_path / "off" / "tiny"))
    run_grid(off, progress=False)
    cells = {c["method"]: c for c in json.loads((tmp_path / "off" / "tiny.json").read_text())["cells"]}
    assert cells["criterion:random"]["epochs_total"] == 1.0 and cells["slimming"]["epochs_total"] == 3.0


def test_a_changed_method_budget_reruns_the_control_rows(tmp_path, monkeypatch):
    """A control row is reused only under the budget it ran with."""
    grid = _grid(tmp_path, methods=("slimming", "criterion:random"), seeds=(0,), prune_epochs=1)
    assert run_grid(grid, progress=False)["ran"] == 2
    path = tmp_path / "res" / "tiny.cells" / "macs_0.5__slimming__s0.json"
    cell = json.loads(path.read_text())
    cell["epochs_precut"] = 1.5  # as if the method had trained longer
    path.write_text(json.dumps(cell))
    again = run_grid(grid, progress=False)
    assert again["ran"] == 1
    ctrl = json.loads((tmp_path / "res" / "tiny.cells" / "macs_0.5__criterion_random__s0.json").read_text())
    assert ctrl["extra_epochs"] == 1.5 and ctrl["finetune_steps"] == round(2.5 * ctrl["steps_per_epoch"])


def test_fractional_fine_tune_runs_exact_steps():
    from prunekit.bench.protocol import _Steps, precut_epochs

    batches = [(i, i) for i in range(4)]
    assert [b[0] for b in _Steps(batches, 10)] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1] and len(_Steps(batches, 10)) == 10
    assert precut_epochs(6, 4, {}) == (1.5, "counted")
    assert precut_epochs(6, 4, {"epochs_trained": 3}) == (3.0, "reported")


def test_notes_state_the_matched_budget_goal_and_non_engaged_rows():
    from prunekit.bench.protocol import _fairness_notes

    grid = BenchGrid(methods=("sss", "criterion:random", "tp:l1"), targets=("macs=0.25",), seeds=(0, 1))
    cells = [{"method": "sss", "target": "macs=0.25", "seed": s, "engaged": s == 0, "epochs_precut": 2.0,
              "warnings": ["sss: no gate reached zero; raise prune_epochs"] * (s == 1)} for s in (0, 1)]
    cells += [{"method": "criterion:random", "target": "macs=0.25", "seed": s, "control": True,
               "deps": {"extra_epochs": 2.0, "budget_from": "sss"}} for s in (0, 1)]
    cells += [{"method": "tp:l1", "target": "macs=0.25", "seed": s, "control": True,
               "deps": {"extra_epochs": 2.0, "budget_from": "sss", "goal": 0.2462}, "info": {"kept": k}}
              for s, k in ((0, 0.2458), (1, 0.2466))]
    notes = _fairness_notes(grid, cells)
    assert any("control rows (criterion:random, tp:l1) fine-tune 1 + 2 epochs (sss's pre-cut training)" in n
               for n in notes)
    assert any("within 1% of 0.2462" in n and "0.2458-0.2466" in n for n in notes)
    flagged = [n for n in notes if n.startswith("NOT ENGAGED: sss at macs=0.25")]
    assert len(flagged) == 1 and "1 of 2 seed(s)" in flagged[0] and "raise prune_epochs" in flagged[0]


def test_seeds_runs_one_seed_first_and_the_full_grid_reuses_its_cells(tmp_path):
    from prunekit.bench import bench_job
    from prunekit.errors import ConfigError

    path = tmp_path / "tiny.yaml"
    import yaml

    path.write_text(yaml.safe_dump(_grid(tmp_path, methods=("criterion:l1",)).to_dict()))
    first = bench_job(str(path), progress=False, seeds=[0])
    assert (first["done"], first["ran"], first["remaining"]) == (1, 1, 0)
    cells = tmp_path / "res" / "tiny.cells"
    assert sorted(p.name for p in cells.glob("macs*.json")) == ["macs_0.5__criterion_l1__s0.json"]
    full = bench_job(str(path), progress=False)
    assert (full["done"], full["ran"]) == (2, 1)  # seed 0's cell is reused, only seed 1 runs
    with pytest.raises(ConfigError, match=r"seeds=\[7\].*grid's seeds \[0, 1\]"):
        bench_job(str(path), progress=False, seeds=[7])


def test_a_language_model_grid_reports_perplexity_after_the_cut_and_the_fine_tune(tmp_path):
    from prunekit.bench.grid import BenchGrid
    from prunekit.bench.protocol import _Context, baseline_numbers, run_cell
    from prunekit.report.bench import aggregate_cells, render_bench_markdown

    grid = BenchGrid(name="lm", model="gpt-tiny", data="synthetic-text",
                     data_options={"vocab_size": 32, "seq_len": 16, "n_train": 96, "n_test": 32}, baseline=None,
                     methods=("wanda", "magnitude-llm"), targets=("sparsity=0.5",), seeds=(0,), finetune_epochs=1,
                     lr=0.01, batch_size=16, subset=None, calib_batches=2, latency=False, out=str(tmp_path / "g"))
    ctx = _Context(grid)
    base = baseline_numbers(ctx, tmp_path / "baseline.json")
    cells = [run_cell(ctx, m, "sparsity=0.5", 0, base) for m in grid.methods]
    for cell in cells:
        assert cell["ppl_base"] > 1 and cell["ppl_pruned"] > 1 and cell["ppl_finetuned"] > 1
        assert cell["engaged"] is True
    md = render_bench_markdown(aggregate_cells(cells), grid.protocol())
    assert "| perplexity after the cut | perplexity after fine-tune |" in md
    assert f"Baseline test perplexity {cells[0]['ppl_base']:.2f}" in md
