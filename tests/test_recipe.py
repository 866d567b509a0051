import json

import pytest

from prunekit.errors import ConfigError
from prunekit.recipe import RECIPE_TYPE, Recipe, parse_target


def test_yaml_and_json_round_trip(tmp_path):
    r = Recipe(model="lenet5", target="params=0.25", options={"criterion": "l2"}, ignore=("fc",), subset=None,
               lr=0.05, seed=3)
    for name in ("r.yaml", "r.json"):
        path = r.save(tmp_path / name)
        assert Recipe.load(path) == r
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["type"] == RECIPE_TYPE and data["version"] == 1 and data["ignore"] == ["fc"]


def test_unknown_key_names_closest(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: lenet5\nfinetune_epoch: 2\n")
    with pytest.raises(ConfigError, match=r"unknown key 'finetune_epoch' \(did you mean 'finetune_epochs'\?\)"):
        Recipe.load(path)


def test_override_skips_none_and_rejects_unknown():
    r = Recipe().override(lr=0.2, seed=None, ignore=["conv1"])
    assert r.lr == 0.2 and r.seed == Recipe().seed and r.ignore == ("conv1",)
    with pytest.raises(ConfigError, match="unknown key 'lrr'"):
        Recipe().override(lrr=1.0)


@pytest.mark.parametrize("target, match", [
    ("macs0.5", "KIND=VALUE"),
    ("mac=0.5", "did you mean 'macs'"),
    ("macs=abc", "not a number"),
    ("macs=1.5", r"must be in \(0, 1\]"),
    ("sparsity=1.0", r"must be in \[0, 1\)"),
])
def test_bad_targets(target, match):
    with pytest.raises(ConfigError, match=match):
        Recipe(target=target)


def test_parse_target_values():
    assert parse_target("macs=0.5") == ("macs", 0.5)
    assert parse_target("sparsity=0") == ("sparsity", 0.0)


def test_bad_fields_reported_together():
    with pytest.raises(ConfigError, match=r"batch_size=0.*lr=-1"):
        Recipe(batch_size=0, lr=-1)


def test_wrong_type_and_version(tmp_path):
    with pytest.raises(ConfigError, match="type='other'"):
        Recipe.from_dict({"type": "other"})
    with pytest.raises(ConfigError, match="version=9"):
        Recipe.from_dict({"type": RECIPE_TYPE, "version": 9})
    with pytest.raises(ConfigError, match="does not exist"):
        Recipe.load(tmp_path / "missing.yaml")
