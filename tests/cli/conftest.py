import os
import subprocess
import sys

import pytest


@pytest.fixture
def cli(tmp_path):
    """Run ``prunekit ARGS`` in a subprocess inside tmp_path; returns the CompletedProcess."""

    def run(*args, timeout=120):
        env = {**os.environ, "PRUNEKIT_PROGRESS": "0", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
        return subprocess.run([sys.executable, "-m", "prunekit.cli", *map(str, args)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=timeout)

    return run
