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
    assert path.exists() and (tmp_path / "m.safetensors.json").exists()
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
    with pytest.raises(CheckpointError, match="sidecar"):
        pk.load(tmp_path / "nothing.safetensors", lambda: models()["chain"]()[0])
    meta = json.loads((tmp_path / "m.safetensors.json").read_text())
    assert meta["shapes"]["conv1.weight"] == [4, 3, 3, 3] and meta["modules"]["conv2"]["in_channels"] == 4
