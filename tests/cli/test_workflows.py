import pytest
import torch
from torch import nn

from prunekit.workflows import _staged_output, layer_stats, recalibrate_bn


def test_recalibrate_bn_gives_the_mean_and_variance_of_the_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4, momentum=0.1))
    batches = [(torch.randn(8, 1, 6, 6) * 2 + 1, None) for _ in range(3)]
    model.eval()
    assert recalibrate_bn(model, batches) == 3
    with torch.no_grad():
        acts = torch.cat([model[0](x) for x, _ in batches])  # [24, 4, 4, 4]
    bn = model[1]
    torch.testing.assert_close(bn.running_mean, acts.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-5)
    # cumulative average of each batch's unbiased variance (what momentum=None computes)
    per_batch = torch.stack([model[0](x).detach().transpose(0, 1).reshape(4, -1).var(dim=1) for x, _ in batches])
    torch.testing.assert_close(bn.running_var, per_batch.mean(0), rtol=1e-5, atol=1e-5)
    assert bn.momentum == 0.1 and not model.training


def test_layer_stats_widths_and_sparsity():
    model = nn.Sequential(nn.Conv2d(1, 6, 3), nn.Flatten(), nn.Linear(6, 3))
    with torch.no_grad():
        model[2].weight[0].zero_()
    stats = layer_stats(model)
    assert stats == {"0": {"width": 6, "params": 54, "sparsity": 0.0},
                     "2": {"width": 3, "params": 18, "sparsity": 6 / 18}}


def test_staged_output_replaces_only_on_success(tmp_path):
    out = tmp_path / "run"
    with _staged_output(out) as stage:
        (stage / "a.txt").write_text("1")
    assert (out / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError):
        with _staged_output(out) as stage:
            (stage / "a.txt").write_text("2")
            raise RuntimeError("boom")
    assert (out / "a.txt").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    with _staged_output(out) as stage:
        (stage / "b.txt").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == [".prunekit-run", "b.txt"]  # replaced, never merged


def test_run_job_unstructured_keeps_sparsity_through_fine_tune(tmp_path):
    import json

    from prunekit.recipe import Recipe
    from prunekit.workflows import run_job

    recipe = Recipe(model="lenet5", data="synthetic", data_options={"n_train": 256, "n_test": 64}, baseline=None,
                    method="criterion:magnitude", target="sparsity=0.8", finetune_epochs=1, lr=0.05, batch_size=64,
                    subset=None, calib_batches=1, latency=False, out=str(tmp_path / "run"))
    report = run_job(recipe, progress=False)
    layers = report["per_layer"]
    assert set(layers) == {"conv1", "conv2", "fc1", "fc2"}
    for fqn, row in layers.items():  # per-layer masks: every layer keeps its 80% zeros through fine-tuning
        assert row["sparsity"] == pytest.approx(0.8, abs=0.001), fqn
    assert report["after"]["params"] == report["before"]["params"]
    assert report["after"]["nonzero_params"] < 0.25 * report["before"]["nonzero_params"]
    assert "after BN recalibration" not in report["stages"]
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["after"] == report["after"]


def test_a_method_that_does_not_train_before_the_cut_runs_with_prune_epochs_0_and_a_training_one_is_refused(tmp_path):
    from prunekit.errors import ConfigError
    from prunekit.recipe import Recipe
    from prunekit.workflows import run_job

    common = dict(model="lenet5", data="synthetic", data_options={"n_train": 128, "n_test": 64}, baseline=None,
                  target="macs=0.5", prune_epochs=0, finetune_epochs=1, lr=0.05, batch_size=64, subset=None,
                  calib_batches=1, latency=False)
    report = run_job(Recipe(method="l1-filter", out=str(tmp_path / "a"), **common), progress=False)
    assert report["after"]["macs"] <= 0.5 * report["before"]["macs"]
    with pytest.raises(ConfigError, match="prune_epochs"):
        run_job(Recipe(method="sfp", out=str(tmp_path / "b"), **common), progress=False)


def test_resolve_recipe_flags_override_the_file(tmp_path):
    from prunekit.errors import ConfigError
    from prunekit.recipe import Recipe
    from prunekit.workflows import resolve_recipe

    path = Recipe(model="lenet5", data="synthetic", lr=0.2, seed=4, method="criterion:l2").save(tmp_path / "r.yaml")
    recipe, note = resolve_recipe(str(path), {"lr": 0.05, "baseline": "none", "subset": None},
                                  ["criterion=l1", "steps=3"])
    assert (recipe.model, recipe.lr, recipe.seed, recipe.baseline, recipe.subset) == ("lenet5", 0.05, 4, None, None)
    assert recipe.options == {"criterion": "l1", "steps": 3} and note == ""
    with pytest.raises(ConfigError, match="--option 'steps' must be KEY=VALUE"):
        resolve_recipe(str(path), {}, ["steps"])


def test_run_job_on_text_reports_perplexity_at_every_stage(tmp_path, monkeypatch):
    from prunekit.recipe import Recipe
    from prunekit.workflows import run_job

    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    docs = tmp_path / "docs"
    docs.mkdir()
    words = "a pruned model keeps what matters and drops what does not".split()
    for i in range(5):
        (docs / f"d{i}.txt").write_text(" ".join(words[(i + 3 * j) % len(words)] for j in range(200)))
    recipe = Recipe(model="gpt-tiny", data=f"text:{docs}", data_options={"seq_len": 16, "vocab_size": 300},
                    baseline=None, method="criterion:l1", target="macs=0.8", finetune_epochs=1, lr=0.01,
                    batch_size=8, subset=None, calib_batches=1, latency=False, out=str(tmp_path / "run"))
    report = run_job(recipe, progress=False)
    assert report["before"]["perplexity"] > 1 and report["after"]["perplexity"] > 1
    ppl = report["stages_perplexity"]
    assert list(ppl) == ["baseline", "after prune", "after fine-tune"]
    assert ppl["after fine-tune"] == report["after"]["perplexity"]
    assert ppl["after fine-tune"] < ppl["baseline"]  # an untrained model learns in its one fine-tune epoch
    md = (tmp_path / "run" / "report.md").read_text()
    assert "| test perplexity |" in md and "| stage | test accuracy | test perplexity |" in md
    assert "training blocks of 16 tokens" in md


def test_a_random_weight_criterion_draws_with_the_recipe_seed_and_a_data_criterion_gets_calibration(tmp_path):
    from prunekit.recipe import Recipe
    from prunekit.workflows import run_job

    from prunekit.workflows import resolve_model

    def zeros(seed, criterion):
        recipe = Recipe(model="lenet300", data="synthetic", data_options={"n_train": 64, "n_test": 32},
                        baseline=None, method=f"criterion:{criterion}", target="sparsity=0.5", finetune_epochs=0,
                        batch_size=32, subset=None, calib_batches=1, latency=False, seed=seed,
                        out=str(tmp_path / f"{criterion}{seed}"))
        run_job(recipe, progress=False)
        model = resolve_model(str(tmp_path / f"{criterion}{seed}" / "model.safetensors"))
        return model.fc1.weight == 0

    torch.manual_seed(0)
    a, b = zeros(0, "random"), zeros(1, "random")
    assert a.float().mean() == pytest.approx(0.5, abs=0.01) and not torch.equal(a, b)  # seeds draw different masks
    assert zeros(0, "snip").float().mean() == pytest.approx(0.5, abs=0.01)  # snip read its calibration batches
