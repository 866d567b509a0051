"""Property tests (hypothesis): every target string, recipe mapping, keyword and command line either works or
fails with a ``PrunekitError`` (the CLI: exit code 2 with a one-line message); no other exception escapes."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prunekit as pk
from prunekit.allocate import parse_target as structured_target
from prunekit.cli import main
from prunekit.errors import ConfigError, PrunekitError
from prunekit.recipe import TARGET_KINDS, Recipe, parse_target
from prunekit.testing import models

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

_numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers(-5, 5).map(str),
                     st.sampled_from(["", " ", "abc", "0.5.1", "1e-3", "1_0", "-0", "+0.5", ".5", "5.", "0x1", "½"]),
                     st.text(max_size=6))
_kinds = st.one_of(st.sampled_from([*TARGET_KINDS, "MACS", " Params ", "flops", "keep", "prune", "latency", ""]),
                   st.text(max_size=8))
TARGETS = st.one_of(st.builds(lambda k, sep, v: f"{k}{sep}{v}", _kinds, st.sampled_from(["=", " = ", "==", ":", ""]),
                              _numbers), st.text(max_size=20))


@SETTINGS
@given(TARGETS)
def test_target_grammar_parses_or_refuses(target):
    try:
        kind, value = parse_target(target)
    except ConfigError as e:
        # a hint never names a kind of the opposite meaning
        msg = str(e)
        if "did you mean 'params'" in msg:
            assert "spars" not in target.split("=")[0].lower() and "remov" not in target.lower()
        if "did you mean 'sparsity'" in msg:
            assert not any(w in target.split("=")[0].lower() for w in ("keep", "kept", "param", "dens"))
        return
    assert kind in TARGET_KINDS and math.isfinite(value)
    assert (0 <= value < 1) if kind == "sparsity" else (0 < value <= 1)
    s_kind, s_value = structured_target(target)  # the API's reading: the same grammar, sparsity = 1 - params kept
    assert (s_kind, s_value) == ((kind, value) if kind != "sparsity" else ("params", 1.0 - value))
    assert Recipe(target=target).target_value == value


@pytest.fixture(scope="module")
def chain():
    return models()["chain"]


@SETTINGS
@given(TARGETS)
def test_plan_with_any_target_works_or_refuses(chain, target):
    m, x = chain()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    try:
        p = pk.plan(m, x, target=target)
    except PrunekitError:
        pass
    else:
        assert p.predicted["params_after"] <= p.predicted["params_before"]
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


_values = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=10), st.lists(st.text(max_size=4), max_size=3),
                    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


@SETTINGS
@given(st.dictionaries(st.sampled_from([*Recipe.fields(), "type", "version", "finetune_epoch", "sparsty"]), _values,
                       max_size=5))
def test_recipe_mapping_works_or_refuses(data):
    try:
        r = Recipe.from_dict(data)
    except ConfigError:
        return
    assert Recipe.from_dict(r.to_dict()) == r


@SETTINGS
@given(st.dictionaries(st.sampled_from(["sparsity", "sparsty", "target", "criterion", "round_to", "min_channels",
                                        "global_", "reduce", "trace", "seed", "ignore", "allow_nonfinite", "globl",
                                        "calib"]), _values, max_size=4),
       st.sampled_from(["plan", "prune_", "sparsify_"]))
def test_verbs_with_any_keywords_work_or_refuse(chain, kwargs, verb):
    m, x = chain()
    call = {"plan": lambda: pk.plan(m, x, **kwargs), "prune_": lambda: pk.prune_(m, example_inputs=x, **kwargs),
            "sparsify_": lambda: pk.sparsify_(m, **kwargs)}[verb]
    before = {k: v.clone() for k, v in m.state_dict().items()}
    try:
        result = call()
    except PrunekitError as e:  # a refusal says why and leaves the model as it was
        assert str(e)
        after = m.state_dict()
        assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
        return
    assert result is not None  # nothing public returns None


# ---- the command line --------------------------------------------------------------------------------------
class _Ran(Exception):
    """The stubbed job was reached: the command line was accepted."""


FLAG_VALUES = {
    "--model": st.sampled_from(["lenet5", "lenet55", "resnet20", "x.safetensors", ""]),
    "--data": st.sampled_from(["synthetic", "fashion-mnst", ""]),
    "--method": st.sampled_from(["criterion:l1", "l1-filter", "l1-filtr", "criterion:", "swp"]),
    "--target": TARGETS,
    "--lr": _numbers, "--batch-size": _numbers, "--finetune-epochs": _numbers, "--prune-epochs": _numbers,
    "--seed": _numbers, "--subset": _numbers, "--calib-batches": _numbers,
    "--device": st.sampled_from(["cpu", "cuda", "cuda:3", "mps", "tpu", ""]),
    "--baseline": st.sampled_from(["none", "nope.safetensors", "resnet20-fashion-mnist", "lenet5-synthetic"]),
    "--option": st.sampled_from(["criterion=l2", "oops", "=1", "a=[1"]),
    "--bogus": st.just("1"),
}


@SETTINGS
@given(st.dictionaries(st.sampled_from(sorted(FLAG_VALUES)), st.just(None), max_size=6).flatmap(
    lambda keys: st.fixed_dictionaries({k: FLAG_VALUES[k] for k in keys})))
def test_run_command_lines_work_or_fail_cleanly(tmp_path_factory, monkeypatch, capsys, flags):
    from prunekit import workflows as W

    def stub(recipe, **_):  # everything run_job checks before it trains, then stop
        W._validate_run(recipe, recipe.target_kind)
        raise _Ran

    monkeypatch.setattr(W, "run_job", stub)
    monkeypatch.chdir(tmp_path_factory.mktemp("cli"))
    argv = ["run", "--out", "o"]
    for k, v in flags.items():
        argv += [f"{k}={v}"]
    try:
        code = main(argv)
    except _Ran:
        return
    except SystemExit as e:  # argparse's own usage errors (exit 2)
        assert e.code == 2
        return
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("prunekit run: error: ") and "Traceback" not in err, err


@SETTINGS
@given(st.lists(st.integers(0, 40), min_size=0, max_size=5), st.sampled_from(["lenet5", "lenet300", "vgg-small"]))
def test_inspect_with_any_input_shape_works_or_fails_cleanly(capsys, shape, model):
    argv = ["inspect", "--model", model, "--json"] + (["--input-shape", ",".join(map(str, shape))] if shape else [])
    code = main(argv)
    err = capsys.readouterr().err
    assert code in (0, 2), err
    if code == 2:
        assert err.startswith("prunekit inspect: error: ") and "Traceback" not in err, err
