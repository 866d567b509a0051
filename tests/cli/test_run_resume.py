"""`prunekit run --resume`: an interrupted run continues from its last fine-tune checkpoint, bit-identically."""
import pytest
import yaml
from safetensors.torch import load_file

from prunekit.cli import main
from prunekit.train import checkpoint

RECIPE = {"type": "prunekit.Recipe", "version": 1, "model": "lenet5", "data": "synthetic",
          "data_options": {"n_train": 256, "n_test": 64}, "baseline": None, "method": "criterion:l1",
          "target": "macs=0.5", "finetune_epochs": 2, "lr": 0.05, "batch_size": 32, "calib_batches": 1,
          "subset": None, "latency": False}


@pytest.fixture
def run_main(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(RECIPE))
    monkeypatch.setattr("prunekit.workflows.RUN_CHECKPOINT_EVERY", 3)

    def run(*args):
        code = main(["run", "--recipe", "r.yaml", *map(str, args)])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_interrupted_run_resumes_to_the_uninterrupted_weights(run_main, tmp_path, monkeypatch):
    assert run_main("--out", "full")[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "r.yaml"]  # the checkpoint folder is gone
    real, calls = checkpoint.save_checkpoint, []

    def save_then_interrupt(*args, **kwargs):
        path = real(*args, **kwargs)
        calls.append(kwargs["meta"]["step"])
        if len(calls) == 2:  # Ctrl-C right after the second checkpoint (mid-way through epoch 1)
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_interrupt)
    code, _, err = run_main("--out", "cut")
    monkeypatch.setattr(checkpoint, "save_checkpoint", real)
    assert code == 130 and "--resume" in err and calls == [3, 6]
    assert not (tmp_path / "cut").exists() and (tmp_path / ".cut.resume" / "finetune").is_dir()
    code, _, err = run_main("--out", "cut", "--seed", "7", "--resume")
    assert code == 2 and "used other settings (seed: 0 -> 7)" in err
    steps = []
    monkeypatch.setattr(checkpoint, "save_checkpoint",
                        lambda *a, **k: (steps.append(k["meta"]["step"]), real(*a, **k))[1])
    code, _, err = run_main("--out", "cut", "--resume")
    assert code == 0, err
    assert steps[0] == 8  # continued after step 6 (a fresh start would checkpoint at step 3 first)
    full, resumed = load_file(str(tmp_path / "full" / "model.safetensors")), \
        load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert full.keys() == resumed.keys()
    assert all(full[k].equal(resumed[k]) for k in full)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut", "full", "r.yaml"]


def test_resume_without_an_interrupted_run_says_so(run_main, tmp_path):
    code, _, err = run_main("--out", "nothing", "--resume")
    assert code == 2 and "no interrupted run writing out='nothing'" in err
