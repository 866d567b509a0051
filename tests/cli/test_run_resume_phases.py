"""`prunekit run --resume` continues every phase: the method's own training, the cut, the fine-tune.

In-process interruptions (Ctrl-C raised right after a checkpoint was written) of a training-time method's run on
a tiny synthetic setting; the resumed run must give the uninterrupted run's weights bit for bit and leave no
checkpoint folder behind. The subprocess SIGKILL/SIGINT versions are in test_run_kill.py.
"""
import logging
import random
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from prunekit import workflows as W
from prunekit.cli import main
from prunekit.train import checkpoint
from prunekit.train.resume_state import capture_callbacks, restore_callbacks

TINY = {"type": "prunekit.Recipe", "version": 1, "model": "resnet20", "data": "synthetic",
        "data_options": {"shape": [1, 8, 8], "n_train": 128, "n_test": 32}, "baseline": None,
        "target": "macs=0.6", "prune_epochs": 2, "finetune_epochs": 1, "lr": 0.05, "batch_size": 32,
        "calib_batches": 1, "subset": None, "latency": False}
OUTPUT = {".prunekit-run", "model.safetensors", "recipe.yaml", "report.json", "report.md"}


def _recipe(method: str) -> dict:
    if method == "dpf":  # unstructured; a mask update every 2 steps fits the 8 steps of its training
        return {**TINY, "method": method, "target": "sparsity=0.5", "options": {"frequency": 2}}
    return {**TINY, "method": method}


@pytest.fixture
def run_main(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("prunekit.workflows.RUN_CHECKPOINT_EVERY", 2)

    def run(method, *args):
        (tmp_path / "r.yaml").write_text(yaml.safe_dump(_recipe(method)))
        code = main(["run", "--recipe", "r.yaml", *map(str, args)])
        out = capsys.readouterr()
        return code, out.err

    return run


def _weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """``uninterrupted(method)``: the weights of an uninterrupted run (one run per method and module)."""
    cache = {}

    def get(method):
        if method not in cache:
            folder = tmp_path_factory.mktemp(method)
            with pytest.MonkeyPatch.context() as mp:
                mp.chdir(folder)
                (folder / "r.yaml").write_text(yaml.safe_dump(_recipe(method)))
                assert main(["run", "--recipe", "r.yaml", "--out", "full"]) == 0
            cache[method] = _weights(folder / "full")
        return cache[method]

    return get


def _interrupt_after_save(monkeypatch, where: str, nth: int) -> list:
    """Ctrl-C right after the ``nth`` checkpoint written into a folder whose path contains ``where``."""
    real, seen = checkpoint.save_checkpoint, []

    def save(directory, *args, **kwargs):
        path = real(directory, *args, **kwargs)
        if where in str(directory):
            seen.append(kwargs["meta"]["step"])
            if len(seen) == nth:
                raise KeyboardInterrupt
        return path

    monkeypatch.setattr(checkpoint, "save_checkpoint", save)
    return seen


def _record_steps(monkeypatch) -> list:
    """The (folder name, step) of every checkpoint the run writes."""
    real, steps = checkpoint.save_checkpoint, []

    def save(directory, *args, **kwargs):
        steps.append((Path(directory).name, kwargs["meta"]["step"]))
        return real(directory, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_checkpoint", save)
    return steps


PHASES = ["pre-cut training", "after the cut", "fine-tune"]


# sfp: soft masks re-selected by its callback; slimming: an L1 push on BN scales; dpf: feedback-mode masks
@pytest.mark.parametrize("method,point", [*[("sfp", p) for p in PHASES], *[("slimming", p) for p in PHASES],
                                          ("dpf", "pre-cut training"), ("dpf", "after the cut")])
def test_interrupted_in_any_phase_resumes_to_the_uninterrupted_weights(run_main, uninterrupted, tmp_path,
                                                                      monkeypatch, caplog, method, point):
    if point == "pre-cut training":  # mid-way through the method's 2 epochs (4 steps each)
        seen = _interrupt_after_save(monkeypatch, "fit-001", 2)
    elif point == "after the cut":
        real = W._save_cut

        def save_then_interrupt(*args):
            real(*args)
            raise KeyboardInterrupt

        monkeypatch.setattr(W, "_save_cut", save_then_interrupt)
    else:
        seen = _interrupt_after_save(monkeypatch, "finetune", 1)
    code, err = run_main(method, "--out", "cut")
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("prunekit.workflows.RUN_CHECKPOINT_EVERY", 2)
    assert code == 130 and "--resume" in err
    assert not (tmp_path / "cut").exists() and (tmp_path / ".cut.resume").is_dir()
    if point != "after the cut":
        assert seen[-1] == (4 if point == "pre-cut training" else 2)
    steps = _record_steps(monkeypatch)
    with caplog.at_level(logging.INFO, logger="prunekit"):
        code, err = run_main(method, "--out", "cut", "--resume")
    assert code == 0, err
    method_steps = [s for d, s in steps if d.startswith("fit-")]
    if point == "pre-cut training":
        assert min(method_steps) == 4  # continued at step 4 (its epoch-end save), not from the start (step 2)
        assert "resumed from step 4 (epoch 0, batch 4)" in caplog.text
    else:  # the method did not train again
        assert method_steps == [] and "the method had finished" in caplog.text
    if point == "fine-tune":
        assert [s for d, s in steps if d == "finetune"][0] == 4
    full, resumed = uninterrupted(method), _weights(tmp_path / "cut")
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)
    assert {p.name for p in (tmp_path / "cut").iterdir()} >= OUTPUT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut", "r.yaml"]  # no resume or partial folder


def test_a_finished_training_call_restores_its_final_state_and_callback_state(run_main, uninterrupted, tmp_path,
                                                                             monkeypatch, caplog):
    """Interrupted in the fine-tune after the method: the resumed run neither reruns nor retrains the method."""
    _interrupt_after_save(monkeypatch, "finetune", 1)
    assert run_main("sfp", "--out", "cut")[0] == 130
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".cut.resume" / "cut" / "cut.json").unlink()  # no cut checkpoint: the method runs again
    steps = _record_steps(monkeypatch)
    with caplog.at_level(logging.INFO, logger="prunekit"):
        code, err = run_main("sfp", "--out", "cut", "--resume")
    assert code == 0, err
    assert "resumed from step 8 (epoch 2, batch 0)" in caplog.text  # the method's finished fit: no step trained
    assert [s for d, s in steps if d.startswith("fit-")] == []
    assert "the method had finished" not in caplog.text
    full, resumed = uninterrupted("sfp"), _weights(tmp_path / "cut")
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)


class _Counter:
    def __init__(self, model):
        self.model, self.scale = model, model.weight  # the model's own tensor: restored by the weights
        self.masks = {"a": torch.ones(3, dtype=torch.bool)}
        self.history, self.steps, self.best = [], 0, float("inf")
        self.rng, self.gen = random.Random(3), torch.Generator().manual_seed(3)


def test_callback_state_is_restored_in_place():
    model = torch.nn.Linear(3, 2)
    cb = _Counter(model)
    masks, history = cb.masks, cb.history
    cb.masks["a"][1] = False
    cb.history.append((1, 0.5))
    cb.steps, cb.best = 7, 0.25
    cb.rng.random(), torch.rand(2, generator=cb.gen)
    states, tensors = capture_callbacks([cb], model)
    assert list(tensors) == ["callback/0", "callback/1"]  # the mask and the generator; model.weight is not copied
    next_random, next_rand = cb.rng.random(), torch.rand(2, generator=cb.gen)
    fresh = _Counter(model)
    fresh_masks, fresh_history = fresh.masks, fresh.history
    restore_callbacks([fresh], states, tensors)
    assert fresh.masks is fresh_masks and fresh.history is fresh_history  # same objects, new contents
    assert fresh.masks["a"].tolist() == [True, False, True] and fresh.history == [(1, 0.5)]
    assert fresh.steps == 7 and fresh.best == 0.25 and fresh.scale is model.weight
    assert fresh.rng.random() == next_random and torch.equal(torch.rand(2, generator=fresh.gen), next_rand)
    assert masks is cb.masks and history is cb.history


def test_a_callback_holding_an_optimizer_is_not_checkpointed_and_the_call_is_redone(tmp_path):
    from prunekit.train import Callback, TrainConfig, fit
    from prunekit.train.resume_state import fit_checkpoints

    class Holds(Callback):
        def __init__(self, model):
            self.opt = torch.optim.SGD(model.parameters(), lr=0.1)

    model = torch.nn.Linear(2, 2)
    data = [(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))]
    with fit_checkpoints(tmp_path) as session:
        fit(model, data, TrainConfig(progress=False))
        fit(model, data, TrainConfig(progress=False), callbacks=[Holds(model)])
    assert session.calls == 2 and [n for n, _ in session.redone] == [2]
    assert session.redone[0][1] == "callback Holds.opt is an optimizer or scheduler that fit does not use"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit-001"]
