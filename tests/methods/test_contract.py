"""Contract tests generated from the method registry: a method is tested the moment it registers.

Every registered method must: have a frozen config whose every field has a default and a source comment;
run end to end through ``prunekit run`` (``workflows.run_job``) on a tiny synthetic setting and meet its
target; report the telemetry it declares; and leave the model exactly as it was when it is interrupted.
"""
import dataclasses
import inspect
import json
import re

import pytest
import torch

import prunekit as pk
from prunekit import workflows as W
from prunekit.errors import ConfigError, MechanismWarning
from torch.overrides import TorchFunctionMode

from prunekit.masks import get_masks
from prunekit.methods import METHODS, RunContext, beyond_catalog, get_method, load_all
from prunekit.methods._harness import run_method
from prunekit.recipe import Recipe

load_all()
IDS = METHODS.names()
TINY = {"data": "synthetic", "data_options": {"shape": [1, 8, 8], "n_train": 128, "n_test": 64},
        "model": "resnet20", "baseline": None, "batch_size": 64, "calib_batches": 2, "prune_epochs": 1,
        "finetune_epochs": 0, "latency": False, "lr": 0.05}
# own contract (no target to meet): sparse-actgrad trains with pruned activation gradients and removes nothing
NO_TARGET = {"sparse-actgrad"}  # tests/methods/test_sparse_actgrad.py checks it keeps the architecture
# own setting: the methods beyond the list (beyond.json) prune language models: gpt-tiny on synthetic text
LANGUAGE = set(beyond_catalog())
TINY_LM = {**TINY, "data": "synthetic-text", "data_options": {"vocab_size": 64, "seq_len": 16, "n_train": 64,
                                                              "n_test": 32}, "model": "gpt-tiny", "batch_size": 16}


def _target(spec) -> str:
    return "sparsity=0.5" if spec.kind == "unstructured" else "macs=0.6"


def test_every_catalogued_implementation_is_registered_once():
    assert len(IDS) == len(set(IDS)) >= 35
    with pytest.raises(ConfigError, match="already registered"):
        spec = get_method(IDS[0])
        METHODS.register(IDS[0])(spec)


@pytest.mark.parametrize("mid", IDS)
def test_config_is_frozen_typed_and_every_field_cites_its_source(mid):
    spec = get_method(mid)
    cfg = spec.config()
    assert dataclasses.is_dataclass(cfg) and spec.config.__dataclass_params__.frozen
    fields = [f.name for f in dataclasses.fields(cfg)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(cfg, fields[0] if fields else "x", None)
    lines = inspect.getsource(spec.config).splitlines()
    for name in fields:  # a comment on the field's line or right above it (its source, or "ours")
        i = next(i for i, line in enumerate(lines) if re.match(rf"\s+{name}\s*:", line))
        assert "#" in lines[i] or lines[i - 1].strip().startswith("#"), f"{mid}: config field {name!r} has no source comment"
    assert json.loads(json.dumps(spec.defaults)) == spec.defaults  # JSON round trip


@pytest.mark.parametrize("mid", IDS)
def test_unknown_option_is_refused_with_the_closest_name(mid):
    spec = get_method(mid)
    fields = sorted(spec.defaults)
    if not fields:
        with pytest.raises(ConfigError, match="unknown option"):
            spec.resolve({"nonsense": 1})
        return
    typo = fields[0] + "x"
    with pytest.raises(ConfigError, match=rf"unknown option of method '{mid}' '{typo}'; did you mean '{fields[0]}'"):
        spec.resolve({typo: 1})


@pytest.mark.parametrize("mid", IDS)
def test_runs_end_to_end_through_prunekit_run_meets_its_target_and_reports_telemetry(mid, tmp_path):
    spec = get_method(mid)
    recipe = Recipe(**(TINY_LM if mid in LANGUAGE else TINY), method=mid, target=_target(spec), out=str(tmp_path / "run"), seed=0, options=spec.smoke)
    report = W.run_job(recipe, progress=False)
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    if spec.kind == "unstructured" and "coef_sparsity" in saved["method"]["telemetry"]:
        # sparsity in another basis (fddp: DCT coefficients of the kernels): the spatial weights stay dense
        assert saved["method"]["telemetry"]["coef_sparsity"] >= 0.5 - 0.02, mid
    elif spec.kind == "unstructured":
        pruned = W.resolve_model(str(tmp_path / "run" / "model.safetensors"), in_channels=1, input_size=8)
        if mid in LANGUAGE:  # embeddings and LM head stay dense (as in the papers): the decoder blocks meet it
            pruned = pruned.blocks
        weights = [m.weight for m in pruned.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
        assert zeros >= 0.5 - 0.02, f"{mid}: {zeros:.3f} of the conv/linear weights are zero, asked 0.5"
    elif mid not in NO_TARGET:
        assert report["ratios"]["macs_kept"] <= 0.6 * 1.01, f"{mid}: kept {report['ratios']['macs_kept']:.3f}"
    assert spec.telemetry is not None, f"{mid} declares no telemetry"
    method = saved["method"]
    assert set(spec.telemetry.keys) <= set(method["telemetry"])
    assert method["engaged"] in (True, False)
    assert (method["engaged"] is False) == bool(method["warnings"])


def _tiny_ctx(spec, seed=0):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    if spec.id in LANGUAGE:
        model = pk.models.create("gpt-tiny", num_classes=64, in_channels=1, input_size=16)
        batches = [(x, torch.roll(x, -1, 1)) for x in (torch.randint(0, 64, (8, 16), generator=g) for _ in range(3))]
        return RunContext(model=model, example_inputs=batches[0][0][:1], target=_target(spec), train_data=batches,
                          val_data=batches[:1], calib=batches[:2], prune_epochs=1, options=dict(spec.smoke))
    model = W.resolve_model("resnet20", in_channels=1, input_size=8)
    batches = [(torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g))
               for _ in range(3)]
    return RunContext(model=model, example_inputs=batches[0][0][:2], target=_target(spec), train_data=batches,
                      val_data=batches[:1], calib=batches[:2], prune_epochs=1, options=dict(spec.smoke))


class _Interrupt(TorchFunctionMode):
    """Counts the torch calls a method makes; raises KeyboardInterrupt at call ``at`` (counting from 1)."""

    def __init__(self, at: int | None):
        super().__init__()
        self.at, self.calls = at, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        if self.at is not None and self.calls == self.at:
            raise KeyboardInterrupt
        return func(*args, **(kwargs or {}))


def _inside(spec, mode):
    """``spec`` whose method body runs under ``mode`` (the harness's own checks do not count)."""
    def fn(ctx, cfg):
        with mode:
            return spec.fn(ctx, cfg)

    return dataclasses.replace(spec, fn=fn)


@pytest.mark.parametrize("mid", IDS)
def test_an_interrupt_late_in_the_run_leaves_the_model_exactly_as_it_was(mid):
    spec = get_method(mid)
    counter = _Interrupt(None)
    with _no_fail():
        run_method(_inside(spec, counter), _tiny_ctx(spec))
    assert counter.calls >= 1
    ctx = _tiny_ctx(spec)
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    modules_before = [(name, type(m)) for name, m in ctx.model.named_modules()]
    with pytest.raises(KeyboardInterrupt):  # late in the method body, when the model is most changed
        run_method(_inside(spec, _Interrupt(max(1, int(0.95 * counter.calls)))), ctx)
    after = ctx.model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert [(name, type(m)) for name, m in ctx.model.named_modules()] == modules_before
    assert not get_masks(ctx.model) and not any(m._forward_hooks or m._forward_pre_hooks for m in ctx.model.modules())


class _no_fail:
    """Runs the block, letting MechanismWarning through (a tiny run may not engage every mechanism)."""

    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("ignore", MechanismWarning)

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


NARROW = [m for m in IDS if METHODS.get(m).targets]


def test_the_methods_that_price_only_macs_declare_it():
    # tas, dsa, dhp, bar, mdp and the dynamic methods refuse params= targets through the harness, not by hand
    assert {"tas", "dsa", "dhp", "bar", "mdp", "rnp", "fbs", "dsg"} <= set(NARROW)


@pytest.mark.parametrize("mid", NARROW)
def test_a_target_kind_the_method_does_not_take_is_refused_before_it_runs_and_changes_nothing(mid):
    spec = get_method(mid)
    other = next(k for k in ("params", "macs") if k not in spec.targets)
    ctx = _tiny_ctx(spec)
    ctx = dataclasses.replace(ctx, target=f"{other}=0.6")
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    called = []
    probe = dataclasses.replace(spec, fn=lambda c, cfg: called.append(1))
    with pytest.raises(ConfigError, match=rf"{mid} takes only {spec.targets[0]}=F targets \({re.escape(spec.targets_why)}"):
        run_method(probe, ctx)
    assert called == []
    after = ctx.model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_a_narrowed_target_list_needs_its_reason():
    from prunekit.methods._registry import _validate

    spec = get_method("tas")
    with pytest.raises(ConfigError, match=r"say why \(targets_why=\.\.\.\)"):
        _validate("tas", dataclasses.replace(spec, targets_why=""))
    with pytest.raises(ConfigError, match=r"targets=\('flops',\)"):
        _validate("tas", dataclasses.replace(spec, targets=("flops",)))
