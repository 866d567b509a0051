import json

from prunekit.cli import main
from prunekit.methods import METHODS, beyond_catalog, catalog, load_all


def test_methods_json_lists_every_paper_with_registry_status(cli):
    res = cli("methods", "--json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert len(catalog()) == 93
    assert [r["id"] for r in rows] == list(catalog()) + list(beyond_catalog())
    assert [r["section"] for r in rows] == ["list"] * 93 + ["beyond"] * len(beyond_catalog())
    load_all()
    for row in rows:
        expected = METHODS.get(row["id"]).status if row["id"] in METHODS else "not-yet"
        assert row["status"] == expected, row["id"]
        if row["status"] == "partial":
            assert row["left_out"], row["id"]


def test_methods_status_filter_and_table(capsys):
    assert main(["methods", "--json"]) == 0
    everything = json.loads(capsys.readouterr().out)
    assert main(["methods", "--status", "not-yet", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in rows] == [r["id"] for r in everything if r["status"] == "not-yet"]
    assert main(["methods"]) == 0
    table = capsys.readouterr().out
    assert "93 papers of the list" in table and "l1-filter" in table
    assert f"{len(beyond_catalog())} beyond the list" in table and "wanda" in table


def test_methods_bad_status(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["methods", "--status", "implementd"]) == 2
    err = capsys.readouterr().err
    assert "status='implementd'" in err and "did you mean 'implemented'" in err
    assert list(tmp_path.iterdir()) == []
