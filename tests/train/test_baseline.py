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
                              "--lr 0.05 --batch-size 32")
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
    rec = json.loads((shipped_baselines_dir() / f"{name}.json").read_text())
    assert rec["command"].startswith(f"prunekit train --model {rec['model']} --data {rec['data']} "
                                     f"--epochs {rec['epochs']} --out baselines/{name}.safetensors")
    assert rec["sha256"] == sha256_file(shipped_baselines_dir() / f"{name}.safetensors")
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
