import json

from prunekit.methods import METHODS, catalog, load_all


def test_methods_json_lists_every_paper_with_registry_status(cli):
    res = cli("methods", "--json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert len(rows) == 93 == len(catalog())
    assert [r["id"] for r in rows] == list(catalog())
    load_all()
    for row in rows:
        expected = METHODS.get(row["id"]).status if row["id"] in METHODS else "not-yet"
        assert row["status"] == expected, row["id"]
        if row["status"] == "partial":
            assert row["left_out"], row["id"]


def test_methods_status_filter_and_table(cli):
    everything = json.loads(cli("methods", "--json").stdout)
    rows = json.loads(cli("methods", "--status", "not-yet", "--json").stdout)
    assert [r["id"] for r in rows] == [r["id"] for r in everything if r["status"] == "not-yet"]
    table = cli("methods")
    assert table.returncode == 0
    assert "93 papers" in table.stdout and "l1-filter" in table.stdout


def test_methods_bad_status(cli, tmp_path):
    res = cli("methods", "--status", "implementd")
    assert res.returncode == 2
    assert "status='implementd'" in res.stderr and "did you mean 'implemented'" in res.stderr
    assert list(tmp_path.iterdir()) == []
