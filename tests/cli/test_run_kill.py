"""`prunekit run` killed (SIGKILL) in its fine-tune, then `--resume`: the weights of an uninterrupted run."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml
from safetensors.torch import load_file

RECIPE = {"type": "prunekit.Recipe", "version": 1, "model": "lenet5", "data": "synthetic",
          "data_options": {"n_train": 512, "n_test": 64}, "baseline": None, "method": "criterion:l1",
          "target": "macs=0.5", "finetune_epochs": 3, "lr": 0.05, "batch_size": 32, "calib_batches": 1,
          "subset": None, "latency": False}


def _cli(cwd, *args):
    env = {**os.environ, "PRUNEKIT_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "prunekit.cli", "-v", "run", "--recipe", "r.yaml", *args], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_in_the_fine_tune_then_resume_gives_the_uninterrupted_weights(tmp_path):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(RECIPE))
    full = _cli(tmp_path, "--out", "full")
    _, err = full.communicate(timeout=600)
    assert full.returncode == 0, err
    cut = _cli(tmp_path, "--out", "cut")
    index = tmp_path / ".cut.resume" / "finetune" / "checkpoint.json"
    deadline = time.time() + 600
    while not index.exists() and cut.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert cut.poll() is None, "the run finished before its first fine-tune checkpoint"
    cut.send_signal(signal.SIGKILL)  # after the first epoch's checkpoint, somewhere in the second epoch
    cut.wait(timeout=60)
    assert not (tmp_path / "cut").exists()
    resumed = _cli(tmp_path, "--out", "cut", "--resume")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert re.search(r"resumed from step (15|30) \(epoch [12], batch 0\)", err)  # 461 training images, 32 a batch
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut", "full", "r.yaml"]
