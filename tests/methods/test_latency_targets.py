"""A ``latency=`` target through the one target grammar: taken by the width searches that price candidates by a
latency table (the methods of ``recipe.LATENCY_METHODS``, ``pk.search``), refused by name everywhere else."""
import dataclasses

import pytest
import torch

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.measure.latency_table import LatencyTable
from prunekit.methods import get_method, load_all
from prunekit.methods._registry import METHODS
from prunekit.recipe import LATENCY_METHODS, Recipe, parse_target
from prunekit.workflows import _check_method

from method_setups import search_ctx, trained_tiny_convnet


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _same(m, state) -> bool:
    return all(torch.equal(state[k], v) for k, v in m.state_dict().items())


def synthetic_table(model, x, path) -> str:
    """A table of ``model`` whose timings are in x out / 100 ms (deterministic, monotone), saved at ``path``."""
    table = LatencyTable.build(model, x, None, warmup=0, runs=2, grid=(0.5, 1.0))
    for e in table.entries.values():
        e["ms"] = [[a * b / 100 for b in e["out"]] for a in e["in"]]
    table.dense_ms, table._env = table.layers_ms() + 0.05, {}
    table.calibration = {"widths": [], "measured_ms": 0.0, "residual": 0.05, "act": 0.5}
    table.save(path)
    return str(path)


def test_the_grammar_parses_latency_only_where_a_search_takes_it_and_says_where_elsewhere():
    assert parse_target("latency=0.5", latency=True) == ("latency", 0.5)
    assert parse_target("Latency = 2.5ms", latency=True) == ("latency_ms", 2.5)
    with pytest.raises(ConfigError) as e:
        parse_target("latency=0.5")
    msg = str(e.value)
    assert "latency_table" in msg and "prunekit search --latency-table" in msg and "macs=F" in msg
    assert all(name in msg for name in LATENCY_METHODS)
    for bad, fragment in [("latency=1.5", "latency=1.5ms"), ("latency=0ms", "> 0 ms"),
                          ("latency=quick", "not a latency target")]:
        with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
            parse_target(bad, latency=True)


def test_the_methods_named_as_taking_a_latency_target_are_exactly_those_with_a_latency_table_option():
    load_all()
    with_option = sorted(i for i, spec in METHODS.items()
                         if "latency_table" in {f.name for f in dataclasses.fields(spec.config)})
    assert with_option == sorted(LATENCY_METHODS)


def test_plan_refuses_a_latency_target_naming_the_search_and_leaves_the_model_unchanged():
    m = trained_tiny_convnet()
    state = _state(m)
    with pytest.raises(ConfigError, match="latency table"):
        pk.plan(m, torch.randn(2, *search_ctx(m).example_inputs.shape[1:]), target="latency=0.5")
    assert _same(m, state)


def test_a_method_without_a_latency_table_option_refuses_a_latency_target_by_name():
    m = trained_tiny_convnet()
    state = _state(m)
    ctx = search_ctx(m, target="latency=0.5")
    with pytest.raises(ConfigError, match="l1-filter prices its widths by MACs or params") as e:
        get_method("l1-filter").run(ctx)
    assert "eagleeye" in str(e.value)
    assert _same(m, state)


def test_a_search_method_given_a_latency_target_without_its_table_says_which_option_to_set():
    m = trained_tiny_convnet()
    state = _state(m)
    with pytest.raises(ConfigError, match=r"options=\{'latency_table': PATH\}"):
        get_method("eagleeye").run(search_ctx(m, target="latency=0.5", candidates=2))
    assert _same(m, state)


@pytest.mark.filterwarnings("ignore::prunekit.errors.MechanismWarning")  # smoke budgets: the search is the point
@pytest.mark.parametrize("method,options", [
    ("eagleeye", {"candidates": 3, "recal_batches": 2, "val_images": 64, "window": 0.5}),
    ("abcpruner", {"food_number": 2, "max_cycle": 1, "fitness_steps": 1, "val_images": 64}),
    ("amc", {"episodes": 3, "warmup": 2, "round_to": 1, "recal_batches": 2, "val_images": 64, "batch": 8}),
])
def test_the_search_methods_cut_to_widths_whose_predicted_latency_meets_the_target(tmp_path, method, options):
    m = trained_tiny_convnet()
    x = search_ctx(m).example_inputs
    path = synthetic_table(m, x, tmp_path / "t.json")
    table = LatencyTable.load(path, m, x)
    dense_ms = table.dense_ms
    ctx = search_ctx(m, target="latency=0.8", latency_table=path, **options)
    res = get_method(method).run(ctx)
    after = LatencyTable.build(res.model, x, None, warmup=0, runs=2, grid=(1.0,))
    for e in after.entries.values():  # the pruned model priced by the same synthetic cost
        e["ms"] = [[a * b / 100 for b in e["out"]] for a in e["in"]]
    assert after.layers_ms() + 0.05 < dense_ms  # it did cut, and by the table's cost
    costs = res.info.get("costs") or [res.telemetry["best_cost"]]
    assert max(costs) <= 0.8 + 1e-9  # every candidate priced by the table met latency=0.8


def test_run_jobs_refuse_a_latency_target_for_a_criterion_or_a_method_without_a_table():
    for method in ("criterion:l1", "l1-filter"):
        with pytest.raises(ConfigError, match="latency"):
            _check_method(method, "latency")
    assert _check_method("eagleeye", "latency").id == "eagleeye"
    r = Recipe(model="resnet20", method="eagleeye", target="latency=0.5", options={"latency_table": "t.json"})
    assert (r.target_kind, r.target_value) == ("latency", 0.5)


def test_a_recipe_run_with_a_latency_target_cuts_the_model_by_the_table_and_measures_latency(tmp_path):
    from prunekit.workflows import run_job

    x = torch.zeros(1, 1, 8, 8)
    model = pk.models.create("resnet20", num_classes=10, in_channels=1, input_size=8)
    path = synthetic_table(model, x, tmp_path / "t.json")
    recipe = Recipe(model="resnet20", data="synthetic", baseline=None, method="eagleeye", target="latency=0.7",
                    data_options={"shape": [1, 8, 8], "n_train": 128, "n_test": 32}, prune_epochs=1,
                    finetune_epochs=1, batch_size=32, calib_batches=1, latency=True, out=str(tmp_path / "run"),
                    options={"latency_table": path, "candidates": 2, "recal_batches": 1, "val_images": 32,
                             "window": 0.3})
    rep = run_job(recipe, progress=False)
    tel = rep["method"]["telemetry"]
    assert tel["best_cost"] <= 0.7 + 1e-9 and tel["max_ratio"] >= 0.7  # R widened for the latency target
    assert rep["after"]["macs"] < rep["before"]["macs"]
    assert rep["before"]["latency_ms"] > 0 and rep["after"]["latency_ms"] > 0  # measured, beside the table's
