"""Robust accuracy in `prunekit run --robust ATTACK` and in bench grids (`robust:`), issue 22.

The figure is the accuracy under the named attack on the test set (prunekit.train.adversarial.robust_accuracy),
before and after the run; without the option every output is as before (no key, no row, same fingerprint)."""
import json

import pytest
import torch

from prunekit import workflows as W
from prunekit.bench import BenchGrid
from prunekit.bench.protocol import run_cell, _Context
from prunekit.cli import main
from prunekit.errors import ConfigError
from prunekit.recipe import Recipe
from prunekit.report import aggregate_cells, summary_rows
from prunekit.report.bench import render_bench_markdown
from prunekit.train.adversarial import parse_attack, robust_accuracy

TINY = {"data": "synthetic", "data_options": {"shape": [1, 8, 8], "n_train": 96, "n_test": 64}, "model": "resnet20",
        "baseline": None, "batch_size": 32, "calib_batches": 1, "finetune_epochs": 1, "latency": False, "lr": 0.05,
        "method": "criterion:l1", "target": "macs=0.5", "seed": 0}


@pytest.mark.parametrize("text, want", [
    ("pgd:eps=0.1,steps=10", {"attack": "pgd", "eps": 0.1, "steps": 10}),
    ("pgd:eps=0.3,steps=40,alpha=0.01", {"attack": "pgd", "eps": 0.3, "steps": 40, "alpha": 0.01}),
    ("fgsm:eps=0.05", {"attack": "fgsm", "eps": 0.05})])
def test_parse_attack_reads_the_option(text, want):
    assert parse_attack(text) == want


@pytest.mark.parametrize("text, fragment", [("cw:eps=0.1", "not 'pgd' or 'fgsm'"), ("pgd:steps=3", "no eps"),
                                            ("pgd:eps=a", "not a number"), ("fgsm:eps=0.1,steps=3", "steps"),
                                            ("pgd:eps=-1", "eps=-1.0"), ("pgd:eps=0.1,steps=0", "steps=0")])
def test_bad_attack_strings_are_config_errors_naming_the_fix(text, fragment):
    with pytest.raises(ConfigError, match=fragment) as e:
        parse_attack(text)
    assert "pgd:eps=0.1,steps=10" in str(e.value) or "must be" in str(e.value)


def test_run_reports_robust_accuracy_before_and_after_and_the_numbers_are_the_attack_on_the_saved_model(tmp_path):
    report = W.run_job(Recipe(**TINY, out=str(tmp_path / "r")), progress=False, robust="pgd:eps=0.5,steps=3")
    before, after = report["before"], report["after"]
    assert report["robust"] == {"attack": "pgd", "eps": 0.5, "steps": 3, "spec": "pgd:eps=0.5,steps=3"}
    assert 0 <= before["robust_accuracy"] <= 1 and 0 <= after["robust_accuracy"] <= 1
    saved = json.loads((tmp_path / "r" / "report.json").read_text())
    assert saved["after"]["robust_accuracy"] == after["robust_accuracy"] and saved["robust"] == report["robust"]
    model = W.resolve_model(str(tmp_path / "r" / "model.safetensors"), in_channels=1, input_size=8).eval()
    test = W._load_data(Recipe(**TINY, out=str(tmp_path / "x"))).test
    again = robust_accuracy(model, test, attack="pgd", eps=0.5, steps=3, seed=0)
    assert again["robust"] == after["robust_accuracy"] and again["clean"] == pytest.approx(after["accuracy"])
    rows = {r[0]: r for r in summary_rows(report)}
    row = rows["pgd accuracy (eps 0.5, 3 steps)"]
    assert row[1] == f"{100 * before['robust_accuracy']:.2f}%" and row[2] == f"{100 * after['robust_accuracy']:.2f}%"
    assert "pgd accuracy (eps 0.5, 3 steps)" in (tmp_path / "r" / "report.md").read_text()


def test_without_the_option_the_report_is_unchanged(tmp_path):
    report = W.run_job(Recipe(**TINY, out=str(tmp_path / "r")), progress=False)
    assert "robust" not in report and "robust_accuracy" not in report["before"]
    assert "robust_accuracy" not in report["after"]
    assert [r[0] for r in summary_rows(report)] == ["test accuracy", "parameters", "MACs"]


def test_cli_refuses_a_bad_attack_before_running(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["run", "--model", "lenet5", "--data", "synthetic", "--baseline", "none", "--method", "criterion:l1",
                 "--out", "r", "--robust", "pgd:eps=zero"])
    assert code == 2 and "--robust" in capsys.readouterr().err and not (tmp_path / "r").exists()


def _grid(tmp_path, **kw):
    base = dict(name="tiny", model="resnet20", data="synthetic", data_options={"shape": [1, 8, 8], "n_train": 96,
                                                                             "n_test": 64},
                baseline=None, methods=("criterion:l1",), targets=("macs=0.5",), seeds=(0,), finetune_epochs=1,
                lr=0.05, batch_size=32, subset=None, calib_batches=1, latency=False, out=str(tmp_path / "g"))
    base.update(kw)
    return BenchGrid(**base)


def test_bench_grid_without_robust_keeps_its_dict_and_fingerprint(tmp_path):
    plain, robust = _grid(tmp_path), _grid(tmp_path, robust="pgd:eps=0.1,steps=2")
    assert "robust" not in plain.to_dict() and "robust" not in plain.protocol()
    assert robust.protocol()["robust"] == "pgd:eps=0.1,steps=2" and robust.fingerprint() != plain.fingerprint()
    with pytest.raises(ConfigError, match="robust="):
        _grid(tmp_path, robust="pgd:steps=2")


def test_bench_cell_measures_the_attack_and_the_table_shows_its_column(tmp_path, monkeypatch):
    import prunekit.bench.protocol as P

    seen = []

    def spy(model, data, **kw):  # the real attack, recording what it was given
        seen.append((W._evaluate(model, data, "cpu")["accuracy"], kw))
        return robust_accuracy(model, data, **kw)

    monkeypatch.setattr(P, "robust_accuracy", spy)
    grid = _grid(tmp_path, robust="pgd:eps=0.5,steps=2")
    cell = run_cell(_Context(grid), "criterion:l1", "macs=0.5", 0, {})
    (acc, kw), = seen
    assert acc == cell["acc_finetuned"]  # the fine-tuned model on the test set
    assert kw == {"attack": "pgd", "eps": 0.5, "steps": 2, "device": "cpu", "seed": 0} and 0 <= cell["acc_robust"] <= 1
    rows = aggregate_cells([cell])
    assert rows[0]["acc_robust_mean"] == cell["acc_robust"]
    md = render_bench_markdown(rows, grid.protocol())
    head, sep, line = md.splitlines()[2:5]
    assert "| after fine-tune (%) | under pgd:eps=0.5,steps=2 (%) |" in head
    assert head.count("|") == sep.count("|") == line.count("|")
    assert f"{100 * cell['acc_robust']:.2f} ± 0.00" in line
    plain = render_bench_markdown(aggregate_cells([{k: v for k, v in cell.items() if k != "acc_robust"}]))
    assert "under" not in plain and "acc_robust_mean" not in aggregate_cells([{**cell, "acc_robust": None}])[0]
