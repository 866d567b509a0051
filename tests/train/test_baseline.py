import json

import pytest
import torch

from prunekit import data
from prunekit.errors import CheckpointError, ConfigError, DataError
from prunekit.train import evaluate
from prunekit.train.baseline import (command_line, list_baselines, load_baseline, shipped_baselines_dir,
                                     train_baseline)
from prunekit.train.checkpoint import read_record, sha256_file, write_with_record

SYN = {"n_train": 256, "n_test": 128, "noise": 0.5}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("bl") / "lenet300-synthetic.safetensors"
    meta = train_baseline("lenet300", "synthetic", epochs=3, out=out, lr=0.05, batch_size=32, progress=False,
                          data_options=SYN)
    return out, meta


def test_baseline_record_matches_the_weights_and_the_test_set(trained):
    out, meta = trained
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # one file: the record is inside
    rec = read_record(out, "prunekit.baseline")
    assert rec == json.loads(json.dumps(meta))
    assert len(rec["sha256"]) == 64 and rec["sha256"] != sha256_file(out)  # the tensor bytes', not the file's
    assert rec["epochs"] == 3 and rec["seed"] == 0 and rec["params"] == 266610 and rec["test_n"] == 128
    assert rec["command"] == (f"prunekit train --model lenet300 --data synthetic --epochs 3 --out {out} "
                              "--lr 0.05 --batch-size 32 " + " ".join(f"--data-option {k}={v}"
                                                                          for k, v in sorted(SYN.items())))
    model = load_baseline(str(out))
    bundle = data.load("synthetic", val_fraction=0.0, **SYN)
    assert evaluate(model, bundle.test)["accuracy"] == rec["test_accuracy"]
    torch.manual_seed(0)
    from prunekit import models

    chance = evaluate(models.create("lenet300"), bundle.test)["accuracy"]
    assert rec["test_accuracy"] >= chance + 0.3


def test_tampered_weights_or_record_are_refused(trained, tmp_path):
    out, _ = trained
    w = tmp_path / out.name
    raw = bytearray(out.read_bytes())
    raw[-5] ^= 0x01
    w.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"is corrupted: sha256 .* does not match the recorded"):
        load_baseline(str(w))
    rec = read_record(out, "prunekit.baseline")
    rec["build"]["num_classes"] = 5
    from safetensors.torch import load_file

    write_with_record(w, load_file(str(out)), "prunekit.baseline", rec)
    with pytest.raises(CheckpointError, match=r"does not match the model \(shape mismatches"):
        load_baseline(str(w))


def test_unknown_baseline_names_the_closest(trained):
    out, _ = trained
    assert list_baselines(out.parent) == ["lenet300-synthetic"]
    with pytest.raises(ConfigError, match=r"unknown baseline name='lenet30-synthetic'; did you mean "
                                          r"'lenet300-synthetic'\?.*prunekit train"):
        load_baseline("lenet30-synthetic", directory=out.parent)
    with pytest.raises(ConfigError, match=r"out='x.pt' must end in '.safetensors'"):
        train_baseline("lenet300", "synthetic", out="x.pt")


def test_command_line_lists_only_changed_options():
    assert command_line("resnet20", "fashion-mnist", 6, "baselines/r.safetensors", lr=0.1, augment="none",
                        batch_size=128, subset=5000) == ("prunekit train --model resnet20 --data fashion-mnist "
                                                         "--epochs 6 --out baselines/r.safetensors --augment none "
                                                         "--subset 5000")


SHIPPED = list_baselines(shipped_baselines_dir())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_baselines_load_with_their_hash_and_command(name):
    weights = shipped_baselines_dir() / f"{name}.safetensors"
    side = weights.with_suffix(".json")
    if side.exists():  # the older form: the record beside the weights, the hash of the file
        rec = json.loads(side.read_text())
        assert rec["sha256"] == sha256_file(weights)
    else:  # the record in the file's header, the hash of the tensor bytes (checked by load_baseline)
        rec = read_record(weights, "prunekit.baseline")
        assert rec is not None and len(rec["sha256"]) == 64
    assert rec["command"].startswith(f"prunekit train --model {rec['model']} --data {rec['data']} "
                                     f"--epochs {rec['epochs']} --out baselines/{name}.safetensors")
    model = load_baseline(name, directory=shipped_baselines_dir())
    assert sum(p.numel() for p in model.parameters()) == rec["params"]


@pytest.mark.skipif("lenet300-fashion-mnist" not in SHIPPED, reason="baseline not shipped")
def test_shipped_lenet300_reproduces_its_recorded_accuracy():
    try:
        bundle = data.load("fashion-mnist", val_fraction=0.0)
    except DataError as e:  # the data set is an optional install
        pytest.skip(f"Fashion-MNIST not available: {e}")
    rec = json.loads((shipped_baselines_dir() / "lenet300-fashion-mnist.json").read_text())
    acc = evaluate(load_baseline("lenet300", directory=shipped_baselines_dir()), bundle.test)["accuracy"]
    assert acc == rec["test_accuracy"] and acc >= 0.89


def test_language_model_baseline_records_its_build_perplexity_curve_and_command(tmp_path, monkeypatch):
    import math

    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    docs = tmp_path / "docs"
    docs.mkdir()
    words = "the quick brown fox jumps over a lazy dog while seven wizards hum".split()
    for i in range(6):
        (docs / f"d{i}.txt").write_text(" ".join(words[(i + j * 7) % len(words)] for j in range(300)))
    out = tmp_path / "lm.safetensors"
    rec = train_baseline("gpt-tiny", f"text:{docs}", epochs=2, out=out, lr=3e-3, optimizer="adamw", batch_size=8,
                         warmup_steps=2, grad_clip_norm=1.0, progress=False, model_options={"d_model": 16,
                         "n_layer": 1, "n_head": 2}, data_options={"seq_len": 16, "vocab_size": 300})
    assert rec["build"]["d_model"] == 16 and rec["build"]["input_size"] == 16
    curve = [h["val_perplexity"] for h in rec["history"]]
    assert len(curve) == 2 and curve[1] < curve[0]  # the validation documents' perplexity falls
    assert math.isclose(rec["test_perplexity"], math.exp(rec["test_loss"]), rel_tol=1e-9)
    blocks = len(data.load(f"text:{docs}", seq_len=16, vocab_size=300).train.inputs)
    assert rec["tokens_seen"] == 2 * blocks * 16
    assert "--model-option d_model=16" in rec["command"] and "--warmup-steps 2" in rec["command"] \
        and "--data-option seq_len=16" in rec["command"]
    model = load_baseline(str(out))
    assert model.tok_emb.embedding_dim == 16 and len(model.blocks) == 1  # rebuilt from the record
