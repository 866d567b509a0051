import pytest

from prunekit._registry import Registry
from prunekit.errors import ConfigError
from prunekit.methods import catalog


def test_registry_suggests_closest_name():
    r = Registry("criterion")
    r.register("fpgm")(object())
    r.register("taylor")(object())
    with pytest.raises(ConfigError, match=r"unknown criterion 'fpmg'; did you mean 'fpgm'\?"):
        r.get("fpmg")


def test_registry_refuses_duplicates():
    r = Registry("thing")
    r.register("a")(1)
    with pytest.raises(ConfigError, match="already registered"):
        r.register("a")(2)
    assert r.get("a") == 1


def test_catalog_lists_the_93_papers_of_the_seed_list():
    cat = catalog()
    assert len(cat) == 93
    assert cat["l1-filter"]["year"] == 2017 and cat["l1-filter"]["type"] == "F"
    assert cat["han-magnitude"]["year"] == 2015
    assert {row["type"] for row in cat.values()} <= {"F", "W", "WF", "Other", "-"}


def test_beyond_list_methods_have_their_own_catalogue():
    from prunekit.methods import beyond_catalog

    beyond = beyond_catalog()
    assert {"magnitude-llm", "wanda", "sparsegpt", "llm-width", "llm-depth"} <= set(beyond)
    assert not set(beyond) & set(catalog())  # never counted among the list's 93 papers
    for row in beyond.values():
        assert row["title"] and row["link"].startswith("https://") and row["year"] >= 2021
