"""Bad input: a clear message naming the argument, exit code 2, and no file written.

Most cases call ``prunekit.cli.main`` in-process (fast); one drives the installed command in a subprocess.
"""
import re

import pytest

from prunekit.cli import main

COMMON = ("run", "--model", "lenet5", "--data", "synthetic", "--baseline", "none", "--out", "out")


@pytest.fixture
def run_main(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    def run(*args):
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.mark.parametrize("args, message", [
    (("--method", "l1-filtr"), "did you mean 'l1-filter'"),
    (("--method", "criterion:l1", "--target", "macs=1.5"), r"must be in \(0, 1\]"),
    (("--method", "criterion:l1", "--target", "flops=0.5"), "unknown target kind 'flops'"),
])
def test_run_bad_method_and_target(run_main, tmp_path, args, message):
    code, _, err = run_main(*COMMON, *args)
    assert code == 2
    assert re.search(message, err), err
    assert list(tmp_path.iterdir()) == []


def test_run_refuses_a_catalogued_paper_whose_implementation_is_not_registered(run_main, tmp_path, monkeypatch):
    from prunekit.methods import METHODS, load_all

    load_all()  # every paper has an implementation now: take one out of the registry for this test
    monkeypatch.delitem(METHODS._items, "swp")
    code, _, err = run_main(*COMMON, "--method", "swp", "--target", "macs=0.5")
    assert code == 2
    assert "'swp' is in the catalogue but not implemented yet" in err
    assert list(tmp_path.iterdir()) == []


def test_run_reports_every_problem_at_once(run_main, tmp_path):
    code, _, err = run_main("run", "--model", "lenet55", "--data", "fashion-mnst", "--method", "l1-filtr",
                            "--baseline", "none")
    assert code == 2
    assert "3 problems" in err
    assert "model='lenet55'; did you mean 'lenet5'" in err
    assert "data='fashion-mnst'; did you mean 'fashion-mnist'" in err
    assert "method='l1-filtr'; did you mean 'l1-filter'" in err
    assert list(tmp_path.iterdir()) == []


def test_run_recipe_unknown_key_and_missing_file(run_main, tmp_path):
    (tmp_path / "r.yaml").write_text("model: lenet5\nfinetune_epoch: 1\n")
    code, _, err = run_main("run", "--recipe", "r.yaml")
    assert code == 2 and "unknown key 'finetune_epoch' (did you mean 'finetune_epochs'?)" in err
    code, _, err = run_main("run", "--recipe", "nope.yaml")
    assert code == 2 and "recipe='nope.yaml' does not exist" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def test_missing_baseline_says_how_to_make_it(run_main, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_BASELINES", str(tmp_path / "empty"))
    code, _, err = run_main("run", "--model", "resnet20", "--data", "synthetic", "--method", "criterion:l1",
                            "--baseline", "resnet20-synthetic")
    assert code == 2
    assert "prunekit train --model resnet20 --data synthetic" in err
    assert list(tmp_path.iterdir()) == []


def test_eval_and_export_bad_paths(run_main, tmp_path):
    code, _, err = run_main("eval", "--model", "runs/x/model.safetensors", "--data", "synthetic")
    assert code == 2 and "no such file" in err
    code, _, err = run_main("export", "--model", "lenet5", "--onnx", "model.txt")
    assert code == 2 and "must end in .onnx" in err
    assert list(tmp_path.iterdir()) == []


def test_subprocess_exit_code_and_stderr(cli, tmp_path):
    res = cli(*COMMON, "--method", "l1-filtr")
    assert res.returncode == 2
    assert res.stderr.startswith("prunekit run: error: unknown method method='l1-filtr'; did you mean 'l1-filter'?")
    assert res.stdout == "" and list(tmp_path.iterdir()) == []


def test_bench_missing_grid(run_main, tmp_path):
    code, _, err = run_main("bench", "grid.yaml")
    assert code == 2 and "grid='grid.yaml' does not exist" in err
    assert list(tmp_path.iterdir()) == []
