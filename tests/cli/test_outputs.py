"""--out protection: a folder is written only when new, empty or a previous run; replaced whole, never merged."""
import json
import os

import pytest

from prunekit.cli import main
from prunekit.workflows import RUN_MARKER, _staged_output

PRUNE = ("prune", "--model", "lenet5", "--target", "params=0.5")


@pytest.fixture
def run_main(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    def run(*args):
        code = main(list(map(str, args)))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_folder_of_user_files_is_refused_then_replaced_with_force(run_main, tmp_path):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.tex").write_text("years of work")
    (mine / "sub" / "data.csv").write_text("1,2")
    before = _tree(mine)
    code, _, err = run_main(*PRUNE, "--out", "mine")
    assert code == 2
    assert "holds files that are not a prunekit run (sub, thesis.tex)" in err and "--force" in err
    assert _tree(mine) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no staging folder left
    code, _, err = run_main(*PRUNE, "--out", "mine", "--force")
    assert code == 0, err
    assert sorted(p.name for p in mine.iterdir()) == [RUN_MARKER, "model.safetensors", "report.json"]


def test_previous_run_is_replaced_whole_but_a_note_added_to_it_is_protected(run_main, tmp_path):
    assert run_main(*PRUNE, "--out", "runs/a")[0] == 0
    out = tmp_path / "runs" / "a"
    marker = json.loads((out / RUN_MARKER).read_text())
    assert marker["files"] == ["model.safetensors", "report.json"]
    first = (out / "report.json").read_text()
    assert run_main("prune", "--model", "lenet5", "--target", "params=0.25", "--out", "runs/a")[0] == 0
    assert json.loads((out / "report.json").read_text())["target"] == "params=0.25" != json.loads(first)["target"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["a"]  # no .old/.partial folder left
    (out / "notes.md").write_text("my notes")
    code, _, err = run_main(*PRUNE, "--out", "runs/a")
    assert code == 2 and "prunekit did not write (notes.md)" in err
    assert (out / "notes.md").read_text() == "my notes"


def test_out_dot_works_in_an_empty_folder_and_replaces_a_previous_run_in_place(run_main, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    os.chdir(work)
    code, _, err = run_main(*PRUNE, "--out", ".")
    assert code == 0, err
    assert sorted(p.name for p in work.iterdir()) == [RUN_MARKER, "model.safetensors", "report.json"]
    code, _, err = run_main("prune", "--model", "lenet5", "--target", "params=0.25", "--out", ".")
    assert code == 0, err
    assert os.getcwd() == str(work) and work.is_dir()
    assert sorted(p.name for p in work.iterdir()) == [RUN_MARKER, "model.safetensors", "report.json"]
    assert json.loads((work / "report.json").read_text())["target"] == "params=0.25"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_out_that_is_a_file_is_refused_and_kept(run_main, tmp_path):
    (tmp_path / "f").write_text("keep")
    code, _, err = run_main(*PRUNE, "--out", "f")
    assert code == 2 and "out='f' is a file" in err
    assert (tmp_path / "f").read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_read_only_folder_is_refused_before_any_work(run_main, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    # the tests may run as root, which writes anywhere: make the check see the folder as read-only
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.path.abspath(p) == str(ro) else real(p, mode))
    code, _, err = run_main(*PRUNE, "--out", "ro")
    assert code == 2 and "out='ro' is read-only" in err
    code, _, err = run_main(*PRUNE, "--out", "ro/new")
    assert code == 2 and "read-only folder" in err
    assert list(ro.iterdir()) == []


def test_interrupt_or_failure_leaves_no_partial_folder_and_the_old_run(tmp_path):
    out = tmp_path / "run"
    with _staged_output(out) as stage:
        (stage / "a.txt").write_text("1")
    for exc in (KeyboardInterrupt, RuntimeError):
        with pytest.raises(exc):
            with _staged_output(out) as stage:
                (stage / "a.txt").write_text("2")
                raise exc()
        assert (out / "a.txt").read_text() == "1"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_staging_folder_of_a_killed_run_is_removed_by_the_next_run(tmp_path):
    out = tmp_path / "run"
    dead = tmp_path / ".run.partial-999999999-deadbeef"
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"x")
    with _staged_output(out) as stage:
        (stage / "a.txt").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_force_never_deletes_home_root_or_a_folder_above_the_working_directory(run_main, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    os.chdir(deep)
    code, _, err = run_main(*PRUNE, "--out", str(tmp_path), "--force")
    assert code == 2 and "--force will not delete it" in err
    assert (tmp_path / "keep.txt").read_text() == "mine" and deep.is_dir()
