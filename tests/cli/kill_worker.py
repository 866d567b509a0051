"""Run by test_run_kill.py / test_train_kill.py: the prunekit CLI, slowed down so a test can kill it at a point.

Usage: python kill_worker.py MODE MARKER -- CLI ARGS...
MODE ``steps``: every optimizer step sleeps 20 ms (the numbers are unchanged; only the timing widens).
MODE ``save:NAME``: the atomic write of the file NAME (e.g. the baseline) writes its first bytes, creates MARKER and
hangs for 10 minutes, so the test can kill the process in the middle of the save.
"""
import contextlib
import signal
import sys
import time
from pathlib import Path

import torch

if __name__ == "__main__":
    # A shell starts a background job with SIGINT ignored and a child inherits that; the tests model Ctrl-C in a
    # terminal, where Python's handler (KeyboardInterrupt) is installed.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    torch.set_num_threads(1)
    mode, marker = sys.argv[1], Path(sys.argv[2])
    args = sys.argv[sys.argv.index("--") + 1:]
    from prunekit.cli import main
    from prunekit.train import checkpoint, loop

    if mode == "steps":
        real_step = loop._step

        def slow_step(*a, **k):
            time.sleep(0.02)
            return real_step(*a, **k)

        loop._step = slow_step
    elif mode.startswith("save:"):
        name, real_writer = mode[len("save:"):], checkpoint.atomic_writer

        class _Hang:
            def __init__(self, f):
                self.f = f

            def write(self, data):
                n = self.f.write(data)
                self.f.flush()
                marker.touch()
                time.sleep(600)  # killed here
                return n

            def __getattr__(self, attr):
                return getattr(self.f, attr)

        @contextlib.contextmanager
        def hanging_writer(path):
            with real_writer(path) as f:
                yield _Hang(f) if Path(path).name == name else f

        checkpoint.atomic_writer = hanging_writer
    sys.exit(main(args))
