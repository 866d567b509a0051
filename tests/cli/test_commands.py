"""prune / inspect / export / eval through the CLI, checking the numbers they write."""
import json

import onnxruntime  # noqa: F401  (export needs it; a missing one should fail loudly here)
import pytest
import torch

from prunekit.cli import main
from prunekit.models import create


def test_prune_structural_subprocess(cli, tmp_path):
    res = cli("prune", "--model", "lenet5", "--target", "params=0.5", "--criterion", "l2", "--out", "p")
    assert res.returncode == 0, res.stderr
    rep = json.loads((tmp_path / "p" / "report.json").read_text())
    dense = sum(p.numel() for p in create("lenet5").parameters())
    assert rep["before"]["params"] == dense
    assert 0.45 * dense <= rep["after"]["params"] <= 0.5 * dense
    assert rep["after"]["macs"] < rep["before"]["macs"]
    assert rep["per_layer"]["fc2"]["width_after"] == 10
    assert str(rep["after"]["params"]) in res.stdout


def test_prune_unstructured_sparsity_on_a_saved_pruned_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["prune", "--model", "lenet5", "--target", "params=0.5", "--out", "p"]) == 0
    structural = json.loads((tmp_path / "p" / "report.json").read_text())
    assert main(["prune", "--model", "p/model.safetensors", "--target", "sparsity=0.8", "--criterion", "magnitude",
                 "--out", "s"]) == 0
    rep = json.loads((tmp_path / "s" / "report.json").read_text())
    assert rep["before"]["params"] == structural["after"]["params"]  # started from the saved pruned model
    assert rep["after"]["params"] == rep["before"]["params"]  # masks keep the shapes
    weights = sum(v["params_after"] for v in rep["per_layer"].values())
    zeros = sum(v["sparsity"] * v["params_after"] for v in rep["per_layer"].values())
    assert zeros / weights == pytest.approx(0.8, abs=0.01)
    assert rep["before"]["nonzero_params"] - rep["after"]["nonzero_params"] == pytest.approx(zeros, abs=1)
    from prunekit.workflows import resolve_model

    sparse = resolve_model("s/model.safetensors")  # the saved file holds the zeros, with the pruned shapes
    assert sum(p.numel() for p in sparse.parameters()) == rep["after"]["params"]
    assert sum(int((p != 0).sum()) for p in sparse.parameters()) == rep["after"]["nonzero_params"]


def test_prune_bad_criterion_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["prune", "--model", "lenet5", "--target", "macs=0.5", "--criterion", "l3", "--out", "p"]) == 2
    assert "criterion='l3'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_inspect_json_groups(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", "--model", "lenet5", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["params"] == sum(p.numel() for p in create("lenet5").parameters())
    assert [g["width"] for g in rep["groups"]] == [20, 50, 500]  # conv1, conv2, fc1; the output is not prunable
    assert rep["layers"]["fc2"]["width"] == 10


def test_keep_outputs_flag_reaches_inspect_and_prune(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", "--model", "lenet5", "--keep-outputs", "0", "--json"]) == 0
    assert [g["width"] for g in json.loads(capsys.readouterr().out)["groups"]] == [20, 50, 500]
    assert main(["prune", "--model", "lenet5", "--target", "macs=0.5", "--keep-outputs", "logits", "--out", "p"]) == 2
    err = capsys.readouterr().err
    assert "keep_outputs=['logits']: the model has no output 'logits'" in err and "outputs: 0" in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_export_onnx_matches_torch(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--model", "lenet5", "--onnx", "m.onnx"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["max_abs_diff"] < 1e-4 and (tmp_path / "m.onnx").stat().st_size == rep["bytes"]
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_eval_spec_on_synthetic(tmp_path, monkeypatch, capsys):
    from prunekit.workflows import eval_job

    torch.manual_seed(0)
    rep = eval_job("lenet5", "synthetic", latency=False)
    assert rep["n"] == 256 and 0.0 <= rep["accuracy"] <= 1.0
    assert rep["params"] == sum(p.numel() for p in create("lenet5").parameters())
