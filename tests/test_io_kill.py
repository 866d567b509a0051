"""Kill tests of ``pk.save`` on a 100 MB model: SIGKILL, SIGINT and SIGTERM at random points of a save.

After every kill the file loads and holds either the last completed save or the one in flight (never a
mix, never nothing), and no temporary file remains (after SIGKILL of the named-temporary fallback: once
the next save of the same path has run).
"""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import prunekit as pk

WORKER = Path(__file__).with_name("save_kill_worker.py")
sys.path.insert(0, str(WORKER.parent))
from save_kill_worker import factory  # noqa: E402


def _value(path) -> float:
    w = pk.load(path, factory).weight.detach()
    assert torch.all(w == w[0, 0])  # never a mix of two saves
    return float(w[0, 0])


def _kill_during_saves(path, mode, sig, rng):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(WORKER), str(path), mode], stdout=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stdout.readline().strip() == "ready"
    t0 = time.perf_counter()
    assert proc.stdout.readline().strip() == "saved 1"  # one complete save: the "old file" from now on
    one_save = time.perf_counter() - t0
    time.sleep(rng.uniform(0.0, 1.5 * one_save))  # somewhere inside the second (or third) save
    proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=60)
    saved = [1] + [int(line.split()[1]) for line in rest.splitlines() if line.startswith("saved ")]
    return saved[-1], proc.returncode


@pytest.mark.slow
@pytest.mark.parametrize("mode,sig", [("unnamed", signal.SIGKILL), ("named", signal.SIGKILL),
                                      ("named", signal.SIGINT), ("unnamed", signal.SIGINT),
                                      ("named", signal.SIGTERM)])
def test_kill_at_a_random_point_of_a_100mb_save(tmp_path, mode, sig):
    rng = random.Random(f"{mode}{int(sig)}")
    path = tmp_path / "m.safetensors"
    last, code = _kill_during_saves(path, mode, sig, rng)
    assert code != 0  # it was killed while saving, not finished
    assert _value(path) in (last, last + 1)  # the last complete save, or the one that was finishing
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "m.safetensors")
    if sig == signal.SIGKILL and mode == "named":
        pk.save(factory(), path)  # the next save of the path removes the dead process's temporary
        leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "m.safetensors")
    assert leftovers == []
