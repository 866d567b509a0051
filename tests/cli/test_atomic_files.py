"""Exported ONNX files and reports: written whole or not at all, no temporary file left, clear errors."""
import json

import pytest

from prunekit.errors import ConfigError
from prunekit.report.run import write_json
from prunekit.workflows import export_onnx


def test_export_to_an_unwritable_path_is_a_clear_error(tmp_path):
    (tmp_path / "f").write_text("a file, not a folder")
    with pytest.raises(ConfigError, match=r"onnx=.*cannot be written"):
        export_onnx("lenet5", str(tmp_path / "f" / "m.onnx"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_failed_export_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")
    with pytest.raises(ConfigError, match="not faithful, nothing was written"):
        export_onnx("lenet5", str(out), atol=-1.0)  # every export fails the equivalence check
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    rep = export_onnx("lenet5", str(out))
    assert rep["bytes"] == out.stat().st_size > 1000 and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_write_json_is_atomic_and_leaves_no_temporary(tmp_path, monkeypatch):
    from prunekit.train import checkpoint

    path = write_json({"a": 1}, tmp_path / "r.json")
    monkeypatch.setattr(checkpoint.os, "fsync", lambda fd: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        write_json({"a": 2}, path)
    assert json.loads(path.read_text()) == {"a": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
