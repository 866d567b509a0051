"""Run by test_io_kill.py: saves a 100 MB model to PATH over and over until it is killed.

Usage: python save_kill_worker.py PATH named|unnamed
Prints ``ready`` once imported, then ``saved K`` after each complete save of a model whose weights all equal K.
"""
import signal
import sys

import torch
from torch import nn

SIZE = 5000  # one 5000 x 5000 float32 Linear: 100 MB


def factory() -> nn.Module:
    return nn.Linear(SIZE, SIZE, bias=False, device="meta").to_empty(device="cpu")


if __name__ == "__main__":
    # A shell starts a background job with SIGINT ignored and a child inherits that; the tests model Ctrl-C in a
    # terminal, where Python's handler (KeyboardInterrupt) is installed.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    torch.set_num_threads(1)
    import prunekit as pk
    from prunekit.train import checkpoint

    path, mode = sys.argv[1], sys.argv[2]
    if mode == "named":  # exercise the fallback used where O_TMPFILE is unavailable
        checkpoint._open_unnamed = lambda directory: None
    model = factory()
    print("ready", flush=True)
    k = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    while True:
        with torch.no_grad():
            model.weight.fill_(float(k))
        pk.save(model, path)
        print(f"saved {k}", flush=True)
        k += 1
