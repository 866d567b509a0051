import json
import os

import pytest
import torch
from torch import nn

from prunekit.errors import CheckpointError
from prunekit.train import Callback, TrainConfig, fit, load_checkpoint, make_optimizer, save_checkpoint
from prunekit.train import checkpoint as ckpt

CFG = TrainConfig(epochs=3, lr=0.05, scheduler="cosine", progress=False)


class Crash(Callback):
    """Simulates a killed run: raises right after optimizer step ``at``."""

    def __init__(self, at):
        self.at = at

    def on_after_step(self, state):
        if state.step == self.at:
            raise KeyboardInterrupt(f"killed at step {self.at}")


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model, snap):
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap[k]), k


def test_round_trip_restores_model_and_optimizer(tmp_path, make_mlp, data):
    x, y = data
    model = make_mlp()
    opt = make_optimizer(model, CFG)
    model(x).sum().backward()
    opt.step()
    save_checkpoint(tmp_path, model, opt, meta={"step": 1, "note": "hi"})
    other = make_mlp(seed=5)
    opt2 = make_optimizer(other, CFG)
    meta = load_checkpoint(tmp_path, other, opt2)
    assert meta["step"] == 1 and meta["note"] == "hi"
    torch.testing.assert_close(other.state_dict(), model.state_dict(), rtol=0, atol=0)
    buf = [opt2.state[p]["momentum_buffer"] for p in other.parameters()]
    ref = [opt.state[p]["momentum_buffer"] for p in model.parameters()]
    torch.testing.assert_close(buf, ref, rtol=0, atol=0)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-step000000001.safetensors", "checkpoint.json"]


def test_corrupted_tensor_file_is_detected_and_never_loaded(tmp_path, make_mlp):
    save_checkpoint(tmp_path, make_mlp(), meta={"step": 2})
    f = tmp_path / "checkpoint-step000000002.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-3] ^= 0xFF  # flip bits inside the tensor data
    f.write_bytes(bytes(raw))
    target = make_mlp(seed=3)
    snap = _snapshot(target)
    with pytest.raises(CheckpointError, match=r"is corrupted: sha256 .* does not match"):
        load_checkpoint(tmp_path, target)
    _assert_unchanged(target, snap)


def test_corrupted_index_and_missing_checkpoint(tmp_path, make_mlp):
    with pytest.raises(CheckpointError, match=r"no checkpoint in .*set resume=False"):
        load_checkpoint(tmp_path, make_mlp())
    save_checkpoint(tmp_path, make_mlp(), meta={"step": 2})
    (tmp_path / "checkpoint.json").write_text('{"type": "prunekit.checkpoint", "vers')
    with pytest.raises(CheckpointError, match=r"index .* is corrupted"):
        load_checkpoint(tmp_path, make_mlp())


def test_mismatched_model_is_refused_and_left_unchanged(tmp_path, make_mlp):
    save_checkpoint(tmp_path, make_mlp(), meta={"step": 1})
    wider = nn.Sequential(nn.Linear(8, 20), nn.ReLU(), nn.Dropout(0.0), nn.Linear(20, 3))
    snap = _snapshot(wider)
    with pytest.raises(CheckpointError, match=r"does not match the model \(shape mismatches \['0.bias: model "
                                              r"\(20,\) vs checkpoint \(16,\)', '0.weight: model \(20, 8\)"):
        load_checkpoint(tmp_path, wider)
    _assert_unchanged(wider, snap)
    other = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    with pytest.raises(CheckpointError, match=r"missing keys \['2.bias', '2.weight'\]; unexpected keys"):
        load_checkpoint(tmp_path, other)


def test_optimizer_state_for_other_parameters_is_refused(tmp_path, make_mlp):
    model = make_mlp()
    save_checkpoint(tmp_path, model, meta={"step": 1})  # saved without optimizer
    target = make_mlp(seed=2)
    snap = _snapshot(target)
    with pytest.raises(CheckpointError, match=r"holds no optimizer state"):
        load_checkpoint(tmp_path, target, make_optimizer(target, CFG))
    _assert_unchanged(target, snap)


def test_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, make_mlp, monkeypatch):
    first = make_mlp()
    save_checkpoint(tmp_path, first, meta={"step": 1})
    real_replace = os.replace

    def fail_on_index(src, dst):
        if str(dst).endswith("checkpoint.json"):
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_on_index)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, make_mlp(seed=9), meta={"step": 2})
    monkeypatch.setattr(os, "replace", real_replace)
    loaded = make_mlp(seed=4)
    assert load_checkpoint(tmp_path, loaded)["step"] == 1
    torch.testing.assert_close(loaded.state_dict(), first.state_dict(), rtol=0, atol=0)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


@pytest.mark.parametrize("kill_at", [4, 6, 7])  # mid-epoch, epoch boundary (6 batches/epoch), right after it
def test_killed_and_resumed_run_matches_uninterrupted(tmp_path, make_mlp, make_loader, data, kill_at):
    x, y = data
    cfg = CFG.replace(checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=1)
    ref = make_mlp(dropout=0.2)
    ref_res = fit(ref, make_loader(x, y, shuffle=True), CFG)

    killed = make_mlp(dropout=0.2)
    with pytest.raises(KeyboardInterrupt):
        fit(killed, make_loader(x, y, shuffle=True), cfg, callbacks=[Crash(kill_at)])
    assert json.loads((tmp_path / "ck" / "checkpoint.json").read_text())["step"] == kill_at - 1

    resumed = make_mlp(seed=11, dropout=0.2)  # fresh weights: everything must come from the checkpoint
    res = fit(resumed, make_loader(x, y, shuffle=True), cfg.replace(resume=True))
    assert res.resumed_from_step == kill_at - 1 and res.steps == 18
    torch.testing.assert_close(resumed.state_dict(), ref.state_dict(), rtol=1e-6, atol=1e-7)
    for a, b in zip(res.history, ref_res.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["train_acc"] == b["train_acc"] and a["lr"] == pytest.approx(b["lr"])


def test_resume_at_the_end_trains_no_more(tmp_path, make_mlp, make_loader, data):
    x, y = data
    cfg = CFG.replace(epochs=1, checkpoint_dir=str(tmp_path))
    model = make_mlp()
    fit(model, make_loader(x, y), cfg)
    again = make_mlp(seed=3)
    res = fit(again, make_loader(x, y), cfg.replace(resume=True))
    assert res.steps == 6 and len(res.history) == 1
    torch.testing.assert_close(again.state_dict(), model.state_dict(), rtol=0, atol=0)


def test_rng_states_round_trip():
    tensors, states = ckpt._rng_states()
    a = torch.rand(3)
    ckpt.set_rng_states(tensors, states)
    torch.testing.assert_close(torch.rand(3), a, rtol=0, atol=0)


def test_resume_with_other_settings_is_refused(tmp_path, make_mlp, make_loader, data):
    x, y = data
    cfg = CFG.replace(epochs=1, checkpoint_dir=str(tmp_path))
    fit(make_mlp(), make_loader(x, y), cfg)
    model = make_mlp(seed=2)
    snap = _snapshot(model)
    with pytest.raises(CheckpointError, match=r"written by a different run: epochs=1 \(now 2\), lr=0.05 \(now 0.1\)"):
        fit(model, make_loader(x, y), cfg.replace(epochs=2, lr=0.1, resume=True))
    _assert_unchanged(model, snap)


def test_resume_with_prunekit_loader_shuffle_and_augmentation(tmp_path, make_mlp, data):
    """prunekit.data's loader reshuffles and augments per epoch (set_epoch); a resume replays both."""
    from prunekit.data import TensorLoader

    x, y = data

    class Jitter:  # augmentation drawn from the loader's per-epoch generator, per sample
        def draw(self, n, gen):
            return {"noise": 0.1 * torch.randn(n, 8, generator=gen)}

        def apply(self, batch, params):
            return batch + params["noise"]

    def loader():
        return TensorLoader(x, y, batch_size=16, shuffle=True, seed=3, transform=Jitter())

    cfg = CFG.replace(checkpoint_dir=str(tmp_path), checkpoint_every=2)
    ref = make_mlp(dropout=0.2)
    fit(ref, loader(), CFG)
    with pytest.raises(KeyboardInterrupt):
        fit(make_mlp(dropout=0.2), loader(), cfg, callbacks=[Crash(9)])
    resumed = make_mlp(seed=1, dropout=0.2)
    res = fit(resumed, loader(), cfg.replace(resume=True))
    assert res.resumed_from_step == 8
    torch.testing.assert_close(resumed.state_dict(), ref.state_dict(), rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_sigkilled_process_resumes_to_the_uninterrupted_weights(tmp_path):
    import runpy
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    worker = Path(__file__).with_name("kill_worker.py")
    marker, ck = tmp_path / "at-step", tmp_path / "ck"
    proc = subprocess.Popen([sys.executable, str(worker), str(ck), "10", str(marker)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "worker died or never reached step 10"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert json.loads((ck / "checkpoint.json").read_text())["step"] == 9  # step 10's checkpoint never happened

    make = runpy.run_path(str(worker), run_name="kill_worker")["make"]
    ref, loader, cfg = make()
    fit(ref, loader, cfg)
    resumed, loader, cfg = make()
    res = fit(resumed, loader, cfg.replace(checkpoint_dir=str(ck), resume=True))
    assert res.resumed_from_step == 9 and res.steps == 18
    torch.testing.assert_close(resumed.state_dict(), ref.state_dict(), rtol=1e-6, atol=1e-7)


class StopAt(Callback):
    def __init__(self, at):
        self.at, self.seen = at, []

    def on_after_step(self, state):
        self.seen.append(state.step)
        if state.step == self.at:
            state.stop = True


@pytest.mark.parametrize("at", [4, 6])  # mid-epoch, at the epoch's last batch (6 batches an epoch)
def test_resuming_a_run_a_callback_stopped_trains_no_more(tmp_path, make_mlp, make_loader, data, at):
    x, y = data
    cfg = CFG.replace(checkpoint_dir=str(tmp_path), checkpoint_every=1)
    model = make_mlp()
    res = fit(model, make_loader(x, y), cfg, callbacks=[StopAt(at)])
    assert res.steps == at and res.stopped_early
    again, cb = make_mlp(seed=3), StopAt(at)
    res = fit(again, make_loader(x, y), cfg.replace(resume=True), callbacks=[cb])
    assert res.steps == at and res.stopped_early and len(res.history) == 1
    assert cb.seen == list(range(1, at + 1))  # the callback's own record, restored from the checkpoint
    torch.testing.assert_close(again.state_dict(), model.state_dict(), rtol=0, atol=0)


def test_masks_and_callback_state_travel_in_the_checkpoint(tmp_path, make_mlp, make_loader, data):
    from prunekit.masks import get_masks, install_masks_

    x, y = data
    cfg = CFG.replace(epochs=1, checkpoint_dir=str(tmp_path))
    model = make_mlp()
    install_masks_(model, {"0.weight": torch.rand_like(model[0].weight) > 0.5})
    cb = StopAt(0)
    fit(model, make_loader(x, y), cfg, callbacks=[cb])
    again, cb2 = make_mlp(seed=3), StopAt(0)  # no masks yet: they come from the checkpoint
    fit(again, make_loader(x, y), cfg.replace(resume=True), callbacks=[cb2])
    assert get_masks(again).keys() == {"0.weight"} and torch.equal(get_masks(again)["0.weight"],
                                                                   get_masks(model)["0.weight"])
    assert cb2.seen == cb.seen == list(range(1, 7))
    torch.testing.assert_close(again.state_dict(), model.state_dict(), rtol=0, atol=0)
