"""`prunekit run` end to end in a subprocess, on a tiny synthetic budget, checking the report's numbers."""
import json

import pytest
import yaml

RECIPE = {
    "type": "prunekit.Recipe", "version": 1, "model": "resnet20", "data": "synthetic",
    "data_options": {"n_train": 384, "n_test": 128}, "baseline": None, "method": "criterion:l1",
    "target": "macs=0.5", "finetune_epochs": 1, "lr": 0.05, "batch_size": 64, "calib_batches": 2,
    "subset": None, "out": "ignored",
}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, run_prunekit):
    tmp_path = tmp_path_factory.mktemp("run")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(RECIPE))
    res = run_prunekit(tmp_path, "run", "--recipe", "r.yaml", "--out", "runA", "--seed", "1", timeout=900)
    assert res.returncode == 0, res.stderr
    return res, tmp_path / "runA"


def test_run_report_numbers_and_round_trip(first_run, run_prunekit):
    res, out = first_run
    tmp_path = out.parent
    report = json.loads((out / "report.json").read_text())
    before, after = report["before"], report["after"]
    # the MACs target is met, and not by pruning far more than asked
    assert 0.40 * before["macs"] <= after["macs"] <= 0.50 * before["macs"]
    assert report["ratios"]["macs_kept"] == pytest.approx(after["macs"] / before["macs"])
    # params in the report are the engine's count of the pruned model
    engine = report["method"]["info"]["engine_report"]
    assert (engine["params_before"], engine["params_after"]) == (before["params"], after["params"])
    assert (engine["macs_before"], engine["macs_after"]) == (before["macs"], after["macs"])
    # per-layer widths: the stem conv got narrower, the classifier kept its 10 outputs
    layers = report["per_layer"]
    assert layers["fc"]["width_before"] == layers["fc"]["width_after"] == 10
    assert layers["conv1"]["width_after"] < layers["conv1"]["width_before"] == 16
    assert set(report["stages"]) == {"baseline", "after prune", "after BN recalibration", "after fine-tune"}
    assert report["stages"]["after fine-tune"] == after["accuracy"]
    assert report["data"] == {"train_images": 346, "test_images": 128, "num_classes": 10}
    assert len(report["history"]) == 1 and report["history"][0]["loss"] > 0
    # the summary table shows the same numbers
    assert f"{100 * after['accuracy']:.2f}%" in res.stdout and "MACs" in res.stdout
    for name in ("report.md", "recipe.yaml", "widths.png", "sparsity.png", "training.png", "pareto.png"):
        assert (out / name).stat().st_size > 0, name
    # the resolved recipe holds the flags and repeats the run exactly
    resolved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert resolved["seed"] == 1 and resolved["out"] == "runA" and resolved["data_options"] == RECIPE["data_options"]
    res2 = run_prunekit(tmp_path, "run", "--recipe", "runA/recipe.yaml", "--out", "runB", timeout=900)
    assert res2.returncode == 0, res2.stderr
    again = json.loads((tmp_path / "runB" / "report.json").read_text())
    assert again["stages"] == report["stages"]
    assert {k: again["after"][k] for k in ("accuracy", "loss", "params", "macs")} == \
           {k: after[k] for k in ("accuracy", "loss", "params", "macs")}
    assert list(tmp_path.glob(".run*")) == []  # no staging folders left behind


def test_saved_model_matches_report(first_run):
    from prunekit import data
    from prunekit.train import evaluate
    from prunekit.workflows import resolve_model

    _, out = first_run
    report = json.loads((out / "report.json").read_text())
    assert report["model_build"] == {"model": "resnet20", "num_classes": 10, "in_channels": 1, "input_size": 28}
    model = resolve_model(str(out / "model.safetensors"))
    assert sum(p.numel() for p in model.parameters()) == report["after"]["params"]
    assert model.conv1.out_channels == report["per_layer"]["conv1"]["width_after"]
    bundle = data.load("synthetic", batch_size=64, seed=1, subset=None, **RECIPE["data_options"])
    assert evaluate(model, bundle.test)["accuracy"] == report["after"]["accuracy"]
