import os
import subprocess
import sys

import pytest


def run_cli(cwd, *args, timeout=900):
    """Run ``prunekit ARGS`` in a subprocess inside ``cwd``; returns the CompletedProcess."""
    env = {**os.environ, "PRUNEKIT_PROGRESS": "0", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "prunekit.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli(tmp_path):
    return lambda *args, timeout=900: run_cli(tmp_path, *args, timeout=timeout)


@pytest.fixture(scope="session")
def run_prunekit():
    """``run_prunekit(cwd, *args)``: the subprocess runner, for module-scoped fixtures."""
    return run_cli
