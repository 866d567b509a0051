"""One baseline store: `train` writes it, `run`/`eval` read it; `run --model M` never prunes another model."""
import json

import pytest

from prunekit.cli import main
from prunekit.errors import ConfigError
from prunekit.train.baseline import list_baselines, shipped_baselines_dir, user_baselines_dir
from prunekit.workflows import _validate_run, resolve_recipe

TRAIN = ("train", "--model", "lenet300", "--data", "synthetic", "--epochs", "1")
RUN = ("run", "--model", "lenet300", "--data", "synthetic", "--method", "criterion:l1", "--finetune-epochs", "0",
       "--no-latency")


@pytest.fixture
def run_main(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PRUNEKIT_BASELINES", str(tmp_path / "store"))  # restored after --baselines changes it

    def run(*args):
        code = main(list(map(str, args)))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_store_location_follows_env_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNEKIT_BASELINES", str(tmp_path / "a"))
    assert user_baselines_dir() == tmp_path / "a"
    monkeypatch.delenv("PRUNEKIT_BASELINES")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert user_baselines_dir() == tmp_path / "cache" / "prunekit" / "baselines"
    shipped = set(list_baselines(shipped_baselines_dir()))
    assert shipped and shipped <= set(list_baselines())  # the shipped baselines are found after the user store


def test_run_model_without_its_baseline_refuses_with_the_train_command(run_main, tmp_path):
    code, _, err = run_main(*RUN, "--out", "r")
    assert code == 2
    assert "`prunekit train --model lenet300 --data synthetic`" in err and "resnet20" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_run_model_never_prunes_the_default_baseline_of_another_model():
    recipe, _ = resolve_recipe(None, {"model": "lenet300"})
    assert recipe.baseline == "lenet300-fashion-mnist"  # its own (shipped) baseline, not resnet20's
    recipe, _ = resolve_recipe(None, {"model": "lenet300", "baseline": "resnet20-fashion-mnist", "out": "x"})
    with pytest.raises(ConfigError, match=r"baseline='resnet20-fashion-mnist' is a trained resnet20 but "
                                          r"model='lenet300'.*prunekit train --model lenet300"):
        _validate_run(recipe, "macs")


def test_train_writes_the_store_refuses_to_overwrite_and_run_eval_read_it(run_main, tmp_path):
    store = tmp_path / "store"
    code, out, err = run_main(*TRAIN)
    assert code == 0, err
    assert sorted(p.name for p in store.iterdir()) == ["lenet300-synthetic.safetensors"]
    assert "reproduce with: prunekit train --model lenet300 --data synthetic --epochs 1" in out
    weights = (store / "lenet300-synthetic.safetensors").read_bytes()
    code, _, err = run_main(*TRAIN, "--lr", "0.01")
    assert code == 2 and "a baseline is already there" in err and "--force" in err
    assert (store / "lenet300-synthetic.safetensors").read_bytes() == weights
    code, _, err = run_main(*RUN, "--out", "r")  # no --baseline: the store's lenet300-synthetic
    assert code == 0, err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["recipe"]["baseline"] == "lenet300-synthetic" and report["model_build"]["model"] == "lenet300"
    assert report["before"]["params"] == 266610
    code, out, err = run_main("eval", "--model", "lenet300-synthetic", "--data", "synthetic")
    assert code == 0, err
    assert json.loads(out)["params"] == 266610
    code, _, err = run_main(*TRAIN, "--lr", "0.01", "--force")
    assert code == 0, err
    assert (store / "lenet300-synthetic.safetensors").read_bytes() != weights


def test_baselines_flag_selects_the_store(run_main, tmp_path):
    code, _, err = run_main(*TRAIN, "--baselines", "other")
    assert code == 0, err
    assert (tmp_path / "other" / "lenet300-synthetic.safetensors").is_file()
    assert not (tmp_path / "store").exists()
    code, _, err = run_main("eval", "--model", "lenet300-synthetic", "--data", "synthetic", "--baselines", "other")
    assert code == 0, err


def test_a_one_file_baseline_passed_as_a_path_is_read_as_a_baseline(run_main, tmp_path):
    assert run_main(*TRAIN, "--out", "b/l.safetensors")[0] == 0
    code, out, err = run_main("eval", "--model", "b/l.safetensors", "--data", "synthetic")
    assert code == 0, err
    assert json.loads(out)["params"] == 266610
    code, _, err = run_main(*RUN, "--baseline", "b/l.safetensors", "--out", "r")
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "report.json").read_text())["model_build"]["model"] == "lenet300"
