"""The small-scale check of sparse-actgrad (entry ``sparse-actgrad`` in the method notes), scaled to one shared core.

LeNet-5 on a seeded Fashion-MNIST subset (``--subset`` train / test images, no augmentation), SGD lr 0.05,
momentum 0.9, batch 128, ``--epochs`` epochs from the same seeded initialisation, two rows:

* ``dense``: plain training;
* ``sparse p=P``: the sparse-actgrad method (unbiased stochastic pruning of every conv's output gradient, p = P).

Per row: test accuracy, the fraction of exactly-zero conv output-gradient entries per layer (entry check a) and
the fraction the rule zeroed, and the measured training step time: CPU seconds of this process per optimizer
step (one thread; robust to other processes' load) and wall seconds per step. Dense kernels run on the sparse
gradients, so no speed-up is expected on CPU; the pruning itself costs time.
Usage: ``nice python benchmarks/actgrad_check.py [--epochs 3] [--subset 10000 2000] [--p 0.9] [--out FILE]``.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import prunekit as pk
from prunekit.methods import RunContext, get_method, load_all
from prunekit.train import Callback


class StepClock(Callback):
    """CPU and wall seconds spent from each batch start to the end of its optimizer step."""

    def __init__(self):
        self.cpu = self.wall = 0.0
        self.steps = 0

    def on_batch_start(self, state):
        self._c, self._w = time.process_time(), time.perf_counter()

    def on_after_step(self, state):
        self.cpu += time.process_time() - self._c
        self.wall += time.perf_counter() - self._w
        self.steps += 1


def _setup(seed, subset):
    b = pk.data.load("fashion-mnist", batch_size=128, subset=tuple(subset), val_fraction=0.0, augment=False)
    torch.manual_seed(seed)
    return b, pk.models.create("lenet5")


def _cfg(epochs, seed):
    return pk.TrainConfig(epochs=epochs, lr=0.05, momentum=0.9, seed=seed, progress=False)


def run(seed, epochs, subset, p):
    rows = {}
    b, m = _setup(seed, subset)
    clock = StepClock()
    pk.fit(m, b.train, _cfg(epochs, seed), callbacks=[clock])
    rows["dense"] = {"accuracy": pk.evaluate(m, b.test)["accuracy"], "steps": clock.steps,
                     "cpu_s_per_step": clock.cpu / clock.steps, "wall_s_per_step": clock.wall / clock.steps}
    print(json.dumps(rows["dense"]), flush=True)
    b, m = _setup(seed, subset)
    clock = StepClock()
    ctx = RunContext(model=m, example_inputs=b.example_inputs(2), target="macs=1.0", train_data=b.train,
                     prune_epochs=epochs, train_config=_cfg(epochs, seed), seed=seed, options={"p": p})
    res = _timed_run(ctx, clock)
    rows[f"sparse p={p:g}"] = {"accuracy": pk.evaluate(m, b.test)["accuracy"], "steps": clock.steps,
                               "cpu_s_per_step": clock.cpu / clock.steps, "wall_s_per_step": clock.wall / clock.steps,
                               "telemetry": res.telemetry, "engaged": res.engaged, "per_layer": res.info["per_layer"]}
    print(json.dumps({f"sparse p={p:g}": rows[f"sparse p={p:g}"]}), flush=True)
    return rows


def _timed_run(ctx, clock):
    """The method's run with ``clock`` added to its fit (the method module's ``fit`` is wrapped for this call)."""
    import prunekit.methods.sparse_actgrad as mod

    inner = mod.fit

    def fit(model, data, config, callbacks=()):
        return inner(model, data, config, callbacks=[*callbacks, clock])

    mod.fit = fit
    try:
        return get_method("sparse-actgrad").run(ctx)
    finally:
        mod.fit = inner


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--subset", type=int, nargs=2, default=[10000, 2000])
    ap.add_argument("--p", type=float, default=0.9)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    load_all()
    out = {"seed": a.seed, "epochs": a.epochs, "subset": a.subset, "model": "lenet5",
           "rows": run(a.seed, a.epochs, a.subset, a.p)}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
