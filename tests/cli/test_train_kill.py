"""`prunekit train` killed (SIGKILL) or interrupted (SIGINT) while training and while saving its baseline.

The old baseline always loads, no temporary file is left, the new one loads once its save finished, and rerunning
the same command (``--checkpoint-dir``: train's resume) gives the weights of an uninterrupted run.
"""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from prunekit.train.baseline import baseline_info, load_baseline

WORKER = Path(__file__).with_name("kill_worker.py")
ROOT = Path(__file__).resolve().parents[2]
TRAIN = ["train", "--model", "lenet5", "--data", "synthetic", "--subset", "256", "--batch-size", "32", "--lr", "0.05",
         "--epochs", "3"]


def _start(cwd, mode, *args):
    env = {**os.environ, "PRUNEKIT_PROGRESS": "0", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}  # this checkout's prunekit
    return subprocess.Popen([sys.executable, str(WORKER), mode, str(cwd / "marker"), "--", "-v", *TRAIN, *args],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc):
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return err


def _state(path) -> dict:
    return load_baseline(str(path)).state_dict()


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def baselines(tmp_path_factory):
    """An old baseline (seed 0) and the uninterrupted new one (seed 1), trained once for the module."""
    d = tmp_path_factory.mktemp("train")
    _finish(_start(d, "steps", "--out", "old.safetensors", "--seed", "0"))
    _finish(_start(d, "steps", "--out", "new.safetensors", "--seed", "1"))
    return d, _state(d / "old.safetensors"), _state(d / "new.safetensors")


def _setup(tmp_path, baselines):
    d, old, new = baselines
    (tmp_path / "store").mkdir()
    target = tmp_path / "store" / "b.safetensors"
    target.write_bytes((d / "old.safetensors").read_bytes())
    assert _same(_state(target), old)
    return target, old, new


@pytest.mark.slow  # five trainings of a few seconds each plus start-up, about 40 s on a busy CPU
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_killed_while_training_keeps_the_old_baseline_and_resumes_to_the_new(tmp_path, baselines, sig):
    target, old, new = _setup(tmp_path, baselines)
    args = ["--out", str(target), "--seed", "1", "--force", "--checkpoint-dir", str(tmp_path / "ck")]
    proc = _start(tmp_path, "steps", *args)
    index = tmp_path / "ck" / "checkpoint.json"
    while not index.exists() and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "training finished before its first checkpoint"
    proc.send_signal(sig)  # in the second epoch
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGINT:
        assert proc.returncode == 130, err
    assert sorted(p.name for p in target.parent.iterdir()) == ["b.safetensors"]  # nothing temporary beside it
    assert _same(_state(target), old) and baseline_info(str(target))["seed"] == 0
    err = _finish(_start(tmp_path, "steps", *args))  # the same command again continues the run
    assert re.search(r"resumed from step (8|16) \(epoch [12], batch 0\)", err)  # 8 steps an epoch
    assert _same(_state(target), new) and baseline_info(str(target))["seed"] == 1
    assert sorted(p.name for p in target.parent.iterdir()) == ["b.safetensors"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_killed_while_saving_keeps_the_old_baseline_and_no_temporary_file(tmp_path, baselines, sig):
    target, old, new = _setup(tmp_path, baselines)
    proc = _start(tmp_path, "save:b.safetensors", "--out", str(target), "--seed", "1", "--force")
    marker = tmp_path / "marker"
    while not marker.exists() and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(sig)  # the new baseline's bytes are half written
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGINT:
        assert proc.returncode == 130, err
    assert sorted(p.name for p in target.parent.iterdir()) == ["b.safetensors"]
    assert _same(_state(target), old)
    _finish(_start(tmp_path, "steps", "--out", str(target), "--seed", "1", "--force"))  # a save that finishes
    assert _same(_state(target), new) and baseline_info(str(target))["seed"] == 1
    assert sorted(p.name for p in target.parent.iterdir()) == ["b.safetensors"]
