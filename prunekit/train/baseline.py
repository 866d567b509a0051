"""Dense baseline checkpoints: train them with ``prunekit train``, ship them, load them hash-checked.

A baseline is two files side by side: ``<model>-<data>.safetensors`` (the model's ``state_dict``) and
``<model>-<data>.json`` (model spec and build arguments, test accuracy, epochs, seed, the training
config, the exact ``prunekit train`` command line that produced it, and the sha256 of the weights).
:func:`load_baseline` rebuilds the architecture with :func:`prunekit.models.create`, checks the hash and
every key and shape, and only then loads the weights.
"""
from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._registry import unknown_name_message
from ..errors import CheckpointError, ConfigError
from .checkpoint import atomic_write_bytes, check_state_dict, read_verified_tensors, sha256_bytes, tensors_to_bytes
from .config import TrainConfig
from .loop import evaluate, fit

log = logging.getLogger(__name__)

_TYPE = "prunekit.baseline"
_VERSION = 1
# train_baseline argument -> CLI flag, in the order they appear on the recorded command line
_FLAGS = {"lr": "--lr", "batch_size": "--batch-size", "weight_decay": "--weight-decay", "optimizer": "--optimizer",
          "scheduler": "--scheduler", "label_smoothing": "--label-smoothing", "augment": "--augment",
          "seed": "--seed", "subset": "--subset"}
_DEFAULTS = {"lr": 0.1, "batch_size": 128, "weight_decay": 5e-4, "optimizer": "sgd", "scheduler": "cosine",
             "label_smoothing": 0.0, "augment": None, "seed": 0, "subset": None}


def baselines_dir() -> Path:
    """Where shipped baselines live: ``$PRUNEKIT_BASELINES`` or the repository's ``baselines/`` folder."""
    env = os.environ.get("PRUNEKIT_BASELINES")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "baselines"


def list_baselines(directory: str | os.PathLike | None = None) -> list[str]:
    """Names (``<model>-<data>``) of the baselines found in ``directory``."""
    d = Path(directory) if directory is not None else baselines_dir()
    return sorted(p.stem for p in d.glob("*.json") if p.with_suffix(".safetensors").exists())


def command_line(model: str, data: str, epochs: int, out: str, **options: Any) -> str:
    """The ``prunekit train`` command that reproduces a baseline (non-default options only).

    Example:
        >>> command_line("lenet5", "fashion-mnist", 10, "baselines/lenet5-fashion-mnist.safetensors", lr=0.05)
        'prunekit train --model lenet5 --data fashion-mnist --epochs 10 --out baselines/lenet5-fashion-mnist.safetensors --lr 0.05'
    """
    parts = ["prunekit", "train", "--model", model, "--data", data, "--epochs", str(epochs), "--out", str(out)]
    for key, flag in _FLAGS.items():
        if key in options and options[key] != _DEFAULTS[key]:
            parts += [flag, str(options[key])]
    return " ".join(parts)


def train_baseline(model: str = "resnet20", data: str = "fashion-mnist", *, epochs: int = 15,
                   out: str | os.PathLike | None = None, seed: int = 0, lr: float = 0.1, batch_size: int = 128,
                   weight_decay: float = 5e-4, optimizer: str = "sgd", scheduler: str = "cosine",
                   label_smoothing: float = 0.0, augment: str | None = None, data_dir: str | None = None,
                   subset: int | None = None, device: str = "cpu", checkpoint_dir: str | None = None,
                   progress: bool = True, data_options: dict | None = None) -> dict[str, Any]:
    """Train ``model`` on ``data``'s training split, evaluate on its test split, save a baseline.

    Writes ``out`` (``.safetensors``, default ``baselines/<model>-<data>.safetensors``) and the ``.json``
    beside it, atomically and only after training succeeded; returns the JSON's content.
    ``checkpoint_dir`` makes the run resumable (rerun the same call after a kill). ``data_options`` go to
    :func:`prunekit.data.load` (e.g. the ``synthetic`` data set's sizes).
    """
    from .. import data as pk_data
    from .. import models as pk_models

    out = Path(out) if out is not None else Path("baselines") / f"{model}-{data}.safetensors"
    if out.suffix != ".safetensors":
        raise ConfigError(f"out={str(out)!r} must end in '.safetensors'; e.g. out='baselines/{model}-{data}.safetensors'")
    cfg = TrainConfig(epochs=epochs, lr=lr, optimizer=optimizer, weight_decay=weight_decay, scheduler=scheduler,
                      label_smoothing=label_smoothing, seed=seed, device=device, progress=progress,
                      checkpoint_dir=checkpoint_dir, checkpoint_every=100 if checkpoint_dir else 0,
                      resume=checkpoint_dir is not None)
    bundle = pk_data.load(data, batch_size=batch_size, val_fraction=0.0, seed=seed, data_dir=data_dir,
                          augment=augment, subset=subset, **(data_options or {}))
    build = {"num_classes": bundle.num_classes, "in_channels": bundle.in_channels, "input_size": bundle.input_size}
    torch.manual_seed(seed)
    net = pk_models.create(model, **build)
    result = fit(net, bundle.train, cfg)
    test = evaluate(net, bundle.test, device=device)
    options = {"lr": lr, "batch_size": batch_size, "weight_decay": weight_decay, "optimizer": optimizer,
               "scheduler": scheduler, "label_smoothing": label_smoothing, "augment": augment, "seed": seed,
               "subset": subset}
    blob = tensors_to_bytes(net.state_dict())
    meta = {"type": _TYPE, "version": _VERSION, "model": model, "data": data, "build": build,
            "test_accuracy": test["accuracy"], "test_loss": test["loss"], "test_n": test["n"], "epochs": epochs,
            "seed": seed, "subset": subset, "data_options": data_options or {}, "params": sum(p.numel() for p in net.parameters()),
            "command": command_line(model, data, epochs, _display(out), **options),
            "train_config": cfg.replace(checkpoint_dir=None, resume=False, progress=False).to_dict(),
            "history": result.history, "weights": out.name, "sha256": sha256_bytes(blob),
            "torch": torch.__version__, "python": platform.python_version()}
    atomic_write_bytes(out, blob)
    atomic_write_bytes(out.with_suffix(".json"), (json.dumps(meta, indent=1) + "\n").encode())
    log.info("baseline %s: test accuracy %.4f, written to %s", out.stem, test["accuracy"], out)
    return meta


def load_baseline(name: str, *, directory: str | os.PathLike | None = None, device: str = "cpu") -> nn.Module:
    """The baseline ``name`` (``"resnet20"``, ``"resnet20-fashion-mnist"`` or a ``.safetensors`` path), verified.

    Raises ConfigError for an unknown name (closest match and the list shown) and CheckpointError when
    the weights' sha256 or shapes do not match the record.
    """
    meta_path = _resolve(name, directory)
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"baseline record {str(meta_path)!r} is corrupted ({e}); restore it from git") from None
    if meta.get("type") != _TYPE or meta.get("version") != _VERSION:
        raise CheckpointError(f"{str(meta_path)!r} is not a prunekit baseline record (version {_VERSION})")
    tensors = read_verified_tensors(meta_path.with_name(meta["weights"]), meta["sha256"])
    from .. import models as pk_models

    model = pk_models.create(meta["model"], **meta["build"])
    check_state_dict(model, tensors, str(meta_path))
    model.load_state_dict(tensors)
    return model.to(device).eval()


def baseline_info(name: str, *, directory: str | os.PathLike | None = None) -> dict[str, Any]:
    """The JSON record of baseline ``name`` (accuracy, command, hash...), without loading weights."""
    return json.loads(_resolve(name, directory).read_text())


def _resolve(name: str, directory) -> Path:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"baseline name={name!r} must be a string such as 'resnet20'")
    if name.endswith((".safetensors", ".json")):
        path = Path(name).with_suffix(".json")
        if not path.is_file():
            raise ConfigError(f"baseline name={name!r}: no record {str(path)!r} beside it; pass an existing "
                              "baseline path or a name such as 'resnet20'")
        return path
    d = Path(directory) if directory is not None else baselines_dir()
    names = list_baselines(d)
    for candidate in (name, f"{name}-fashion-mnist"):
        if candidate in names:
            return d / f"{candidate}.json"
    raise ConfigError(unknown_name_message("baseline", name, names, "name")
                      + f" (in {str(d)!r}); train one with 'prunekit train --model MODEL --out "
                      f"baselines/MODEL-fashion-mnist.safetensors'")


def _display(path: Path) -> str:
    """``path`` relative to the working directory when inside it (commands must not carry machine paths)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
