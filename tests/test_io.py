import json

import pytest
import torch

import prunekit as pk
from prunekit.errors import CheckpointError
from prunekit.testing import assert_equivalent, models


@pytest.mark.parametrize("name", ["depthwise", "tied", "lstm", "attention_gqa", "grouped"])
def test_save_load_roundtrip_on_fresh_architecture(tmp_path, name):
    factory = models()[name]
    model, x = factory()
    pk.prune_(model, example_inputs=x, sparsity=0.5)
    path = pk.save(model, tmp_path / "m.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # one file, nothing beside it
    loaded = pk.load(path, lambda: factory()[0])
    assert_equivalent(model, loaded, x, atol=0, rtol=0)
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())
    if name == "tied":
        assert loaded.lm_head.weight is loaded.emb.weight


def test_tampered_weights_or_wrong_architecture_are_refused(tmp_path):
    model, x = models()["chain"]()
    pk.prune_(model, example_inputs=x, sparsity=0.5)
    path = pk.save(model, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="does not match the architecture"):
        pk.load(path, lambda: models()["residual"]()[0])
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        pk.load(path, lambda: models()["chain"]()[0])
    with pytest.raises(CheckpointError, match="no such file"):
        pk.load(tmp_path / "nothing.safetensors", lambda: models()["chain"]()[0])
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["prunekit"])
    assert meta["shapes"]["conv1.weight"] == [4, 3, 3, 3] and meta["modules"]["conv2"]["in_channels"] == 4


def _save_two_file_form(model, path):
    """What pk.save wrote before the record moved into the header: weights + a ``.json`` sidecar."""
    import hashlib

    from safetensors.torch import save_file

    from prunekit.io import _size_attrs

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    meta = {"format": "prunekit-pruned", "version": 1, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "shapes": {k: list(v.shape) for k, v in model.state_dict().items()}, "aliases": {},
            "modules": {n: _size_attrs(m) for n, m in model.named_modules()}, "prunable_mha": []}
    (path.parent / (path.name + ".json")).write_text(json.dumps(meta))


def test_load_reads_the_older_two_file_form_and_a_resave_drops_the_sidecar(tmp_path):
    model, x = models()["chain"]()
    pk.prune_(model, example_inputs=x, sparsity=0.5)
    path = tmp_path / "m.safetensors"
    _save_two_file_form(model, path)
    loaded = pk.load(path, lambda: models()["chain"]()[0])
    assert_equivalent(model, loaded, x, atol=0, rtol=0)
    pk.save(loaded, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    assert_equivalent(model, pk.load(path, lambda: models()["chain"]()[0]), x, atol=0, rtol=0)


def test_save_follows_the_umask_and_refuses_a_read_only_folder_cleanly(tmp_path):
    import os

    model, _ = models()["chain"]()
    old = os.umask(0o027)
    try:
        path = pk.save(model, tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o640
    (tmp_path / "afile").write_text("x")
    with pytest.raises(CheckpointError, match="cannot create the folder"):
        pk.save(model, tmp_path / "afile" / "m.safetensors")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):  # root ignores the mode
            pytest.skip("running as root: a read-only folder is writable")
        with pytest.raises(CheckpointError, match="cannot write"):
            pk.save(model, ro / "m.safetensors")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_interrupted_save_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    from prunekit.train import checkpoint

    model, x = models()["chain"]()
    path = pk.save(model, tmp_path / "m.safetensors")
    before = path.read_bytes()
    real = checkpoint.os.fsync

    def interrupt(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.os, "fsync", interrupt)
    pk.prune_(model, example_inputs=x, sparsity=0.5)
    with pytest.raises(KeyboardInterrupt):
        pk.save(model, path)
    monkeypatch.setattr(checkpoint.os, "fsync", real)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_stale_temporary_of_a_killed_process_is_removed_by_the_next_save(tmp_path):
    model, _ = models()["chain"]()
    stale = tmp_path / ".m.safetensors.999999999.deadbeef.prunekit-tmp"
    stale.write_bytes(b"x" * 100)
    pk.save(model, tmp_path / "m.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_sigterm_during_a_save_removes_the_temporary_then_reaches_the_previous_handler(tmp_path, monkeypatch):
    import signal

    from prunekit.train import checkpoint

    model, _ = models()["chain"]()
    path = pk.save(model, tmp_path / "m.safetensors")
    before = path.read_bytes()
    seen = []
    old = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    monkeypatch.setattr(checkpoint, "_open_unnamed", lambda d: None)  # a named temporary, visible if it leaked
    real = checkpoint.os.fsync
    monkeypatch.setattr(checkpoint.os, "fsync", lambda fd: signal.raise_signal(signal.SIGTERM))
    try:
        with pytest.raises(KeyboardInterrupt, match="signal 15 during a save"):
            pk.save(model, path)
    finally:
        signal.signal(signal.SIGTERM, old)
        monkeypatch.setattr(checkpoint.os, "fsync", real)
    assert seen == [signal.SIGTERM]
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_a_pickle_with_a_forged_sidecar_or_a_record_that_does_not_fit_is_a_checkpoint_error(tmp_path):
    import hashlib

    model, _ = models()["chain"]()
    pickled = tmp_path / "p.safetensors"
    torch.save(model.state_dict(), pickled)  # a torch zip, not safetensors
    meta = {"format": "prunekit-pruned", "version": 1, "sha256": hashlib.sha256(pickled.read_bytes()).hexdigest(),
            "shapes": {k: list(v.shape) for k, v in model.state_dict().items()}, "aliases": {}, "modules": {}}
    (tmp_path / "p.safetensors.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a safetensors file written by prunekit.save"):
        pk.load(pickled, lambda: models()["chain"]()[0])
    path = tmp_path / "m.safetensors"
    _save_two_file_form(model, path)  # then a sidecar whose hash matches but whose shapes do not fit the weights
    side = tmp_path / "m.safetensors.json"
    rec = json.loads(side.read_text())
    rec["shapes"]["conv1.weight"] = [2, 3, 3, 3]
    side.write_text(json.dumps(rec))
    with pytest.raises(CheckpointError, match="does not fit its own record"):
        pk.load(path, lambda: models()["chain"]()[0])
