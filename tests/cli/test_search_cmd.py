"""prunekit search: a width search on the shipped ResNet-20, its files, its bad input, its resume."""
import json
import os

import pytest
import torch

import prunekit as pk
from prunekit.cli import main

FASHION = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
pytestmark = pytest.mark.skipif(not os.path.exists(FASHION), reason="Fashion-MNIST not installed (make data)")
SMALL = ["--candidates", "3", "--recal-batches", "2", "--val-images", "128", "--subset", "1500", "--window", "0.05"]


def test_search_writes_the_record_the_report_and_the_model_cut_to_the_chosen_widths(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["search", "--target", "macs=0.5", *SMALL, "--out", "s"]) == 0
    rep = json.loads((tmp_path / "s" / "report.json").read_text())
    assert rep["type"] == "prunekit.SearchReport" and rep["record"]["evaluations"] == 3
    assert {"record.json", "report.md", "search.png", "model.safetensors"} <= set(os.listdir(tmp_path / "s"))
    assert rep["best"]["score"] == max(t["score"] for t in rep["record"]["trials"])
    assert 0.45 <= rep["best"]["cost"] <= 0.5
    m = pk.load(str(tmp_path / "s" / "model.safetensors"), lambda: pk.models.create("resnet20"))
    assert m.conv1.out_channels == rep["widths"]["conv1"]
    assert m.layer3[2].conv1.out_channels == rep["widths"]["layer3.2.conv1"]
    assert "chosen (candidate" in capsys.readouterr().out
    assert not (tmp_path / ".s.resume").exists()  # the record's working copy goes once the search finished


def test_search_bad_input_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["search", "--candidates", "0", "--subset", "1500", "--out", "z"]) != 0
    assert "budget of zero" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()
    assert main(["search", "--baseline", "nope", "--out", "z"]) != 0
    assert "baseline='nope'" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["search", *SMALL, "--out", "mine"]) != 0
    assert "holds files that are not a prunekit run" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]


def test_an_interrupted_search_resumes_from_its_record(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import prunekit.train.subnet_eval as se

    calls = []
    real = se.SubnetEvaluator.__call__

    def flaky(self, model):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, model)

    monkeypatch.setattr(se.SubnetEvaluator, "__call__", flaky)
    assert main(["search", *SMALL, "--out", "r"]) == 130  # Ctrl-C: the CLI's interrupt exit code
    assert not (tmp_path / "r").exists()
    saved = json.loads((tmp_path / ".r.resume" / "search-record.json").read_text())
    assert saved["evaluations"] == 2
    calls.clear()
    assert main(["search", *SMALL, "--out", "r", "--resume"]) == 0
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["record"]["evaluations"] == 3
    assert [t["widths"] for t in rep["record"]["trials"][:2]] == [t["widths"] for t in saved["trials"]]
    assert len(calls) == 1 + 1  # the one candidate left, and the uniform reference


@pytest.mark.slow  # measures a latency table of ResNet-20 (about 20 s)
def test_a_latency_target_is_searched_under_a_measured_table_and_the_report_holds_both_latencies(
        tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # the timing thread's CPU clock: the test shares the cores with other tests, whose slices the wall clock
    # would count into some layers' times and not others'
    assert main(["search", "--target", "latency=0.6", "--latency-table", "t.json", "--latency-clock", "cpu",
                 *SMALL, "--out", "s"]) == 0
    rep = json.loads((tmp_path / "s" / "report.json").read_text())
    lat = rep["latency"]
    assert rep["kind"] == "latency" and rep["best"]["cost"] <= 0.6 + 1e-9
    assert (lat["clock"], lat["statistic"]) == ("cpu", "median")
    assert lat["chosen_predicted_ms"] < lat["dense_predicted_ms"]
    assert lat["chosen_measured_ms"] < lat["dense_measured_ms"]  # the cut model is faster as measured
    assert lat["measured_fraction"] == pytest.approx(lat["chosen_measured_ms"] / lat["dense_measured_ms"])
    assert (tmp_path / "t.json").exists()  # the table stays for the next search
    assert "measured" in (tmp_path / "s" / "report.md").read_text()
    assert "CPU time of the timing thread" in (tmp_path / "s" / "report.md").read_text()
    assert "latency:" in capsys.readouterr().out


def test_a_latency_target_without_a_table_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["search", "--target", "latency=0.5", *SMALL, "--out", "z"]) != 0
    assert "--latency-table PATH" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()
