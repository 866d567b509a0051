"""Dense baseline checkpoints: train them with ``prunekit train``, ship them, load them hash-checked.

A baseline is one file, ``<model>-<data>.safetensors``: the model's ``state_dict`` and, in the safetensors
header's metadata field, its record (model spec and build arguments, test accuracy, epochs, seed, the
training config, the exact ``prunekit train`` command line that produced it, and the sha256 of the
weights). It is written atomically (temporary file, fsync, rename). The older form, a ``.json`` record
beside the weights (the shipped baselines), is read too. :func:`load_baseline` rebuilds the architecture
with :func:`prunekit.models.create`, checks the hash and every key and shape, and only then loads the weights.

There is one store of baselines, searched in this order:

1. the user store: ``$PRUNEKIT_BASELINES`` (the CLI's ``--baselines DIR`` sets it), else
   ``$XDG_CACHE_HOME/prunekit/baselines``, else ``~/.cache/prunekit/baselines``; ``prunekit train``
   writes here and refuses to replace a baseline without ``force``;
2. the shipped baselines (read-only), the ``baselines/`` folder beside the package.
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
from .checkpoint import (check_state_dict, read_record, read_tensors_with_record, read_verified_tensors,
                         write_with_record)
from .config import TrainConfig
from .loop import evaluate, fit
from .. import data as pk_data, models as pk_models

log = logging.getLogger(__name__)

_TYPE = "prunekit.baseline"
_VERSION = 1
# train_baseline argument -> CLI flag, in the order they appear on the recorded command line
_FLAGS = {"lr": "--lr", "batch_size": "--batch-size", "weight_decay": "--weight-decay", "optimizer": "--optimizer",
          "scheduler": "--scheduler", "label_smoothing": "--label-smoothing", "augment": "--augment",
          "seed": "--seed", "subset": "--subset", "warmup_steps": "--warmup-steps",
          "grad_clip_norm": "--grad-clip-norm"}
_DEFAULTS = {"lr": 0.1, "batch_size": 128, "weight_decay": 5e-4, "optimizer": "sgd", "scheduler": "cosine",
             "label_smoothing": 0.0, "augment": None, "seed": 0, "subset": None, "warmup_steps": 0,
             "grad_clip_norm": 0.0}


def user_baselines_dir() -> Path:
    """The user store: ``$PRUNEKIT_BASELINES``, else ``$XDG_CACHE_HOME/prunekit/baselines`` (``~/.cache``)."""
    env = os.environ.get("PRUNEKIT_BASELINES")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "prunekit" / "baselines"


def shipped_baselines_dir() -> Path:
    """The baselines that ship with prunekit (read-only; searched after the user store)."""
    return Path(__file__).resolve().parents[2] / "baselines"


def baselines_dir() -> Path:
    """Where ``prunekit train`` writes a baseline by default: the user store."""
    return user_baselines_dir()


def search_path(directory: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for a baseline name: ``directory`` alone, or the user store then the shipped one."""
    if directory is not None:
        return [Path(directory)]
    user, shipped = user_baselines_dir(), shipped_baselines_dir()
    return [user] if _same(user, shipped) else [user, shipped]


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _record(weights: Path) -> dict | None:
    """The record of a baseline file: in its header, else (older form) in the ``.json`` beside it."""
    rec = read_record(weights, _TYPE)
    if rec is not None:
        return rec
    side = weights.with_suffix(".json")
    if not side.is_file():
        return None
    try:
        return json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"baseline record {str(side)!r} is corrupted ({e}); restore it") from None


def _names(d: Path) -> list[str]:
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.safetensors")
                  if p.with_suffix(".json").is_file() or read_record(p, _TYPE) is not None)


def list_baselines(directory: str | os.PathLike | None = None) -> list[str]:
    """Names (``<model>-<data>``) of the baselines found in ``directory`` (default: the user and shipped stores)."""
    return sorted({n for d in search_path(directory) for n in _names(d)})


def command_line(model: str, data: str, epochs: int, out: str | None = None, **options: Any) -> str:
    """The ``prunekit train`` command that reproduces a baseline (non-default options only).

    Example:
        >>> command_line("lenet5", "fashion-mnist", 10, "baselines/lenet5-fashion-mnist.safetensors", lr=0.05)
        'prunekit train --model lenet5 --data fashion-mnist --epochs 10 --out baselines/lenet5-fashion-mnist.safetensors --lr 0.05'
    """
    parts = ["prunekit", "train", "--model", model, "--data", data, "--epochs", str(epochs)]
    if out is not None:  # None: the default place in the user store
        parts += ["--out", str(out)]
    for key, flag in _FLAGS.items():
        if key in options and options[key] != _DEFAULTS[key]:
            parts += [flag, str(options[key])]
    for flag, key in (("--model-option", "model_options"), ("--data-option", "data_options")):
        for k, v in sorted((options.get(key) or {}).items()):
            parts += [flag, f"{k}={v}"]
    return " ".join(parts)


def baseline_slug(model: str, data: str) -> str:
    """The file stem of a baseline: ``<model>-<data>`` with ``:`` and ``/`` made safe for a file name.

    Example:
        >>> baseline_slug("hf:llama-tiny", "text:python-docs")
        'hf-llama-tiny-text-python-docs'
    """
    return f"{model}-{data}".replace(":", "-").replace("/", "-")


def train_baseline(model: str = "resnet20", data: str = "fashion-mnist", *, epochs: int = 15,
                   out: str | os.PathLike | None = None, seed: int = 0, lr: float = 0.1, batch_size: int = 128,
                   weight_decay: float = 5e-4, optimizer: str = "sgd", scheduler: str = "cosine",
                   label_smoothing: float = 0.0, augment: str | None = None, data_dir: str | None = None,
                   subset: int | None = None, device: str = "cpu", checkpoint_dir: str | None = None,
                   progress: bool = True, data_options: dict | None = None, force: bool = False,
                   model_options: dict | None = None, warmup_steps: int = 0,
                   grad_clip_norm: float = 0.0) -> dict[str, Any]:
    """Train ``model`` on ``data``'s training split, evaluate on its test split, save a baseline.

    Writes ``out`` (``.safetensors``, default ``<user store>/<model>-<data>.safetensors``, see
    :func:`user_baselines_dir`) with its record inside, atomically and only after training succeeded; returns
    the record. An existing baseline at ``out`` is replaced only with ``force=True``.
    ``checkpoint_dir`` makes the run resumable (rerun the same call after a kill). ``data_options`` go to
    :func:`prunekit.data.load` (e.g. the ``synthetic`` data set's sizes), ``model_options`` to
    :func:`prunekit.models.create` (e.g. ``d_model`` of ``gpt-tiny``; recorded, so the baseline rebuilds).
    A data set with a validation split of its own (text, split by document) is evaluated on it after every
    epoch (``history``); for token data the record holds the test perplexity and the tokens seen.
    """
    given_out = out
    out = Path(out) if out is not None else baselines_dir() / f"{baseline_slug(model, data)}.safetensors"
    if out.suffix != ".safetensors":
        raise ConfigError(f"out={str(out)!r} must end in '.safetensors'; e.g. out='{model}-{data}.safetensors'")
    if out.is_dir():
        raise ConfigError(f"out={str(out)!r} is a folder; pass a file path such as "
                          f"{str(out / f'{model}-{data}.safetensors')!r}")
    if not force and (out.exists() or out.with_suffix(".json").exists()):
        raise ConfigError(f"out={str(out)!r}: a baseline is already there; nothing was trained. Pass --force "
                          f"(force=True) to replace it, or --out another .safetensors path")
    cfg = TrainConfig(epochs=epochs, lr=lr, optimizer=optimizer, weight_decay=weight_decay, scheduler=scheduler,
                      label_smoothing=label_smoothing, seed=seed, device=device, progress=progress,
                      checkpoint_dir=checkpoint_dir, checkpoint_every=100 if checkpoint_dir else 0,
                      resume=checkpoint_dir is not None, warmup_steps=warmup_steps, grad_clip_norm=grad_clip_norm)
    bundle = pk_data.load(data, batch_size=batch_size, val_fraction=0.0, seed=seed, data_dir=data_dir,
                          augment=augment, subset=subset, **(data_options or {}))
    build = {"num_classes": bundle.num_classes, "in_channels": bundle.in_channels, "input_size": bundle.input_size,
             **(model_options or {})}
    torch.manual_seed(seed)
    net = pk_models.create(model, **build)
    result = fit(net, bundle.train, cfg, val_data=bundle.val)
    test = evaluate(net, bundle.test, device=device)
    options = {"lr": lr, "batch_size": batch_size, "weight_decay": weight_decay, "optimizer": optimizer,
               "scheduler": scheduler, "label_smoothing": label_smoothing, "augment": augment, "seed": seed,
               "subset": subset, "warmup_steps": warmup_steps, "grad_clip_norm": grad_clip_norm,
               "model_options": model_options, "data_options": data_options}
    tokens = bundle.example_inputs().dtype == torch.long
    lm = {}
    if tokens:
        lm = {"test_perplexity": test["perplexity"], "tokens_seen": epochs * len(bundle.train.inputs) * bundle.input_size}
    meta = {"type": _TYPE, "version": _VERSION, "model": model, "data": data, "build": build,
            "test_accuracy": test["accuracy"], "test_loss": test["loss"], "test_n": test["n"], **lm, "epochs": epochs,
            "seed": seed, "subset": subset, "data_options": data_options or {}, "params": sum(p.numel() for p in net.parameters()),
            "command": command_line(model, data, epochs, None if given_out is None else _display(out), **options),
            "train_config": cfg.replace(checkpoint_dir=None, resume=False, progress=False).to_dict(),
            "history": result.history, "weights": out.name,
            "torch": torch.__version__, "python": platform.python_version()}
    meta = write_with_record(out, net.state_dict(), _TYPE, meta)
    try:  # a record of an older two-file baseline at this path is stale now (and ignored by the reader)
        out.with_suffix(".json").unlink(missing_ok=True)
    except OSError:
        pass
    log.info("baseline %s: test accuracy %.4f, written to %s", out.stem, test["accuracy"], out)
    return meta


def load_baseline(name: str, *, directory: str | os.PathLike | None = None, device: str = "cpu") -> nn.Module:
    """The baseline ``name`` (``"resnet20"``, ``"resnet20-fashion-mnist"`` or a ``.safetensors`` path), verified.

    Raises ConfigError for an unknown name (closest match and the list shown) and CheckpointError when
    the weights' sha256 or shapes do not match the record.
    """
    weights = _resolve(name, directory)
    meta = _checked_record(weights)
    if read_record(weights, _TYPE) is not None:
        tensors = read_tensors_with_record(weights, meta["sha256"])
    else:
        tensors = read_verified_tensors(weights.with_name(meta["weights"]), meta["sha256"])

    model = pk_models.create(meta["model"], **meta["build"])
    check_state_dict(model, tensors, str(weights))
    model.load_state_dict(tensors)
    return model.to(device).eval()


def baseline_info(name: str, *, directory: str | os.PathLike | None = None) -> dict[str, Any]:
    """The record of baseline ``name`` (accuracy, command, hash...), without loading weights."""
    return _checked_record(_resolve(name, directory))


def _checked_record(weights: Path) -> dict:
    meta = _record(weights)
    if not isinstance(meta, dict) or meta.get("type") != _TYPE or meta.get("version") != _VERSION:
        raise CheckpointError(f"{str(weights)!r} is not a prunekit baseline (version {_VERSION})")
    return meta


def _train_hint(name: str) -> str:
    model = name.split("-")[0]
    data = name[len(model) + 1:] or "fashion-mnist"
    return f"prunekit train --model {model} --data {data}"


def _resolve(name: str, directory) -> Path:
    """The weights file of baseline ``name`` (a path, or a name searched in the user then the shipped store)."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"baseline name={name!r} must be a string such as 'resnet20'")
    if name.endswith((".safetensors", ".json")):
        path = Path(name).with_suffix(".safetensors")
        if not path.is_file() or _record(path) is None:
            raise ConfigError(f"baseline name={name!r}: no baseline file {str(path)!r} with its record; pass an "
                              "existing baseline path or a name such as 'resnet20'")
        return path
    dirs = search_path(directory)
    for candidate in (name, f"{name}-fashion-mnist"):
        for d in dirs:
            if candidate in _names(d):
                return d / f"{candidate}.safetensors"
    names = list_baselines(directory)
    full = name if "-" in name else f"{name}-fashion-mnist"
    raise ConfigError(unknown_name_message("baseline", name, names, "name")
                      + f" (looked in {', '.join(repr(str(d)) for d in dirs)}); train one with "
                        f"'{_train_hint(full)}'")


def _display(path: Path) -> str:
    """``path`` relative to the working directory when inside it (commands must not carry machine paths)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
