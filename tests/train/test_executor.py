"""The executor block (prunekit/train/executor.py) and `prunekit bench --executor ray`: a benchmark grid run as
Ray tasks on a local instance (2 CPUs, started by the test) gives the local run's numbers, cell for cell."""
import json
import socket

import pytest
import torch

from prunekit.errors import ConfigError
from prunekit.train.executor import LocalExecutor, RayExecutor, check_address, make_executor


def _square(x):
    if x == 3:
        raise ValueError("three")
    return x * x


def test_the_local_executor_yields_each_result_or_the_error_it_raised():
    out = {i: (r, e) for i, r, e in LocalExecutor().run(_square, [(1,), (2,), (3,)])}
    assert out[0] == (1, None) and out[1] == (4, None)
    assert out[2][0] is None and isinstance(out[2][1], ValueError)


def test_bad_executor_input_is_refused_by_name():
    with pytest.raises(ConfigError, match="executor='dask'"):
        make_executor("dask")
    with pytest.raises(ConfigError, match="address='10.0.0.1:6379' is for executor='ray'"):
        make_executor("local", address="10.0.0.1:6379")
    with pytest.raises(ConfigError, match="is not host:port"):
        check_address("somewhere")
    with pytest.raises(ConfigError, match="num_cpus=0"):
        RayExecutor(num_cpus=0)


def test_an_unreachable_ray_address_is_refused_quickly_naming_it():
    with socket.socket() as s:  # a port nobody listens on: bound, then closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConfigError, match=rf"address='127.0.0.1:{port}': no Ray head answers there"):
        make_executor("ray", address=f"127.0.0.1:{port}")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance (2 CPUs) for the tests below; the executors join it and leave it running."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow  # a local Ray instance: its start and its workers' imports take most of a minute
def test_ray_tasks_give_the_local_runs_numbers_for_grid_cells_and_search_candidates(tmp_path, local_ray):
    import prunekit as pk
    from prunekit.bench import BenchGrid, run_grid
    from prunekit.testing import models

    def grid(name):
        return BenchGrid(name="tiny", model="resnet20", data="synthetic", data_options={"n_train": 128, "n_test": 64},
                         baseline=None, methods=("criterion:l1", "criterion:l2"), targets=("macs=0.5",), seeds=(0,),
                         finetune_epochs=1, lr=0.05, batch_size=64, subset=None, calib_batches=1, latency=False,
                         out=str(tmp_path / name / "tiny"))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tasks run on one thread each: the reference does too
    try:
        local = run_grid(grid("local"), progress=False)
        m, x = models()["residual"]()
        batches = [(torch.randn(4, *x.shape[1:]), torch.randint(0, 2, (4,))) for _ in range(3)]
        kw = dict(train=batches, val=batches, candidates=5, recal_batches=2, window=0.2, seed=3)
        here = pk.search(m, x, "macs=0.6", **kw)
    finally:
        torch.set_num_threads(threads)
    ray_rep = run_grid(grid("ray"), executor="ray", workers=2, progress=False)
    assert (local["done"], ray_rep["done"], ray_rep["ran"], ray_rep["failed"]) == (2, 2, 2, 0)
    for name in ("macs_0.5__criterion_l1__s0.json", "macs_0.5__criterion_l2__s0.json"):
        a = json.loads((tmp_path / "local" / "tiny.cells" / name).read_text())
        b = json.loads((tmp_path / "ray" / "tiny.cells" / name).read_text())
        for key in ("acc_pruned", "acc_recal", "acc_finetuned", "macs", "params"):
            assert a[key] == b[key], key
    again = run_grid(grid("ray"), executor="ray", workers=2, progress=False)  # resumable: nothing left to run
    assert (again["done"], again["ran"]) == (2, 0)

    there = pk.search(m, x, "macs=0.6", executor="ray", workers=2, record=str(tmp_path / "rec.json"), **kw)
    assert [t.widths for t in there.record.trials] == [t.widths for t in here.record.trials]
    assert [t.score for t in there.record.trials] == [t.score for t in here.record.trials]
    assert there.widths == here.widths and there.uniform_score == here.uniform_score
    saved = json.loads((tmp_path / "rec.json").read_text())
    assert [t["score"] for t in saved["trials"]] == [t.score for t in here.record.trials]  # no NaN left


def test_the_bench_command_refuses_an_unreachable_ray_address_before_running_a_cell(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    from prunekit.cli import main

    grid = Path(__file__).resolve().parents[2] / "benchmarks" / "recipes" / "filter_grid.yaml"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.chdir(tmp_path)
    code = main(["bench", str(grid), "--out", "res/g", "--executor", "ray", "--address", f"127.0.0.1:{port}"])
    assert code != 0
    assert f"address='127.0.0.1:{port}': no Ray head answers there" in capsys.readouterr().err
    assert not (tmp_path / "res").exists()
