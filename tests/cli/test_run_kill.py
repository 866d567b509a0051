"""`prunekit run` killed (SIGKILL) or interrupted (SIGINT) in each phase, then `--resume`: the uninterrupted weights.

A training-time method (SFP) on a tiny synthetic setting, run by ``kill_worker.py`` (each step sleeps 20 ms so the
test can hit a phase); the signal is sent once the phase's checkpoint exists: during the method's own training
(after its first epoch), after the cut (the cut checkpoint exists, no fine-tune checkpoint yet), during the
fine-tune (after its first epoch).
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("kill_worker.py")
ROOT = Path(__file__).resolve().parents[2]
RECIPE = {"type": "prunekit.Recipe", "version": 1, "model": "resnet20", "data": "synthetic",
          "data_options": {"shape": [1, 8, 8], "n_train": 256, "n_test": 32}, "baseline": None, "method": "sfp",
          "target": "macs=0.6", "prune_epochs": 3, "finetune_epochs": 3, "lr": 0.05, "batch_size": 32,
          "calib_batches": 1, "subset": None, "latency": False}
OUTPUT = {".prunekit-run", "model.safetensors", "recipe.yaml", "report.json", "report.md"}
# phase -> (file whose appearance starts the countdown, file that must not exist yet when the signal is sent)
PHASES = {"pre-cut training": (".cut.resume/method/fit-001/checkpoint.json", ".cut.resume/cut/cut.json"),
          "after the cut": (".cut.resume/cut/cut.json", ".cut.resume/finetune/checkpoint.json"),
          "fine-tune": (".cut.resume/finetune/checkpoint.json", "cut")}


def _start(cwd, *args):
    env = {**os.environ, "PRUNEKIT_PROGRESS": "0", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}  # this checkout's prunekit
    return subprocess.Popen([sys.executable, str(WORKER), "steps", "unused", "--", "-v", "run", "--recipe", "r.yaml",
                             *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc):
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    return err


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    d = tmp_path_factory.mktemp("full")
    (d / "r.yaml").write_text(yaml.safe_dump(RECIPE))
    _finish(_start(d, "--out", "full"))
    files = {p.name for p in (d / "full").iterdir()}
    assert files >= OUTPUT
    return load_file(str(d / "full" / "model.safetensors")), files


@pytest.mark.slow  # about 30 s a run on a busy CPU, most of it start-up; 13 runs
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
@pytest.mark.parametrize("phase", list(PHASES))
def test_killed_in_a_phase_then_resumed_gives_the_uninterrupted_weights(tmp_path, uninterrupted, phase, sig):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(RECIPE))
    seen, not_yet = (tmp_path / p for p in PHASES[phase])
    proc = _start(tmp_path, "--out", "cut")
    deadline = time.time() + 600
    while not seen.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None and not not_yet.exists(), f"the run left the phase {phase!r} before the signal"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "--resume" in err
    assert not (tmp_path / "cut").exists()
    err = _finish(_start(tmp_path, "--out", "cut", "--resume"))
    if phase == "pre-cut training":
        assert "resumed from step" in err and "fit-001" in err
    else:
        assert "the method had finished" in err
    weights, files = uninterrupted
    resumed = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert resumed.keys() == weights.keys() and all(torch.equal(resumed[k], weights[k]) for k in resumed)
    assert {p.name for p in (tmp_path / "cut").iterdir()} == files  # report, plots, recipe, model, marker
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut", "r.yaml"]  # no partial or resume folder left
