"""DDP: 2 CPU processes under torchrun (gloo) end with the weights of 1 process on the same global batch."""
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PRUNEKIT_PROGRESS": "0"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(WORKER), str(two), "8"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((two / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert [r["samples"] for r in ranks] == [64, 64]  # each rank saw half of 64 samples, for 2 epochs
    assert [r["steps"] for r in ranks] == [16, 16]
    assert ranks[0]["train_acc"] == ranks[1]["train_acc"]  # metrics are all-reduced

    single = runpy.run_path(str(WORKER), run_name="ddp_worker")["run"](str(one), 8)
    assert single["samples"] == 128 and single["steps"] == 16
    w1 = torch.load(one / "weights-rank0.pt")
    for r in (0, 1):
        torch.testing.assert_close(torch.load(two / f"weights-rank{r}.pt"), w1, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.load(two / f"weights2-rank{r}.pt"), w1, rtol=1e-5, atol=1e-6)
    assert single["train_acc"] == pytest.approx(ranks[0]["train_acc"])
    # one complete checkpoint (rank 0 writes it) at the final step
    assert json.loads((two / "ck" / "checkpoint.json").read_text())["step"] == 16
    assert len(list((two / "ck").glob("*.safetensors"))) == 1
