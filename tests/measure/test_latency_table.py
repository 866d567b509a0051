"""The latency table (prunekit/measure/latency_table.py): per-layer timings at a grid of widths, cached per
model and setting, and the latency cost model a width search constrains."""
import json

import numpy as np
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.api import Subnets
from prunekit.errors import ConfigError
from prunekit.measure import latency_table as lt
from prunekit.measure.latency_table import LatencyModel, LatencyTable, parse_latency_target

X = torch.randn(2, 1, 6, 6)


def net(width: int = 4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))


def quick(model, path=None, **kw):
    return LatencyTable.build(model, X, path, **{"warmup": 0, "runs": 2, **kw})


def test_the_table_times_every_layer_at_the_grid_of_widths_once_per_shape(tmp_path):
    m = net()
    t = quick(m, tmp_path / "t.json", grid=(0.5, 1.0))
    assert sorted(t.layers) == ["0", "1", "3", "4", "8"]
    conv2 = t.entries[lt._signature(t.layers["3"])]
    assert conv2["in"] == [2, 4] and conv2["out"] == [3, 6]  # both widths of a convolution, 2 x 2 timings
    bn = t.entries[lt._signature(t.layers["1"])]
    assert bn["in"] == [2, 4] and bn["out"] == [4]  # a BatchNorm has one width
    assert all(v > 0 for e in t.entries.values() for row in e["ms"] for v in row) and t.dense_ms > 0
    assert t.key["input_shape"] == [1, 1, 6, 6]  # batch 1
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["key"]["model"] == lt.model_fingerprint(m) and saved["dense_ms"] == t.dense_ms
    assert LatencyTable.load(tmp_path / "t.json", m, X).entries == t.entries


def test_an_interrupted_build_resumes_timing_only_what_is_missing(tmp_path, monkeypatch):
    m, path = net(), tmp_path / "t.json"
    t = quick(m, path, grid=(0.5, 1.0))
    d = json.loads(path.read_text())
    sig = lt._signature(t.layers["3"])
    d["entries"][sig]["ms"][1][0] = None  # one timing lost
    d["dense_ms"] = None
    path.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="incomplete"):
        LatencyTable.load(path, m, X)
    calls = []
    real = lt.latency
    monkeypatch.setattr(lt, "latency", lambda mod, x, **kw: calls.append(mod) or real(mod, x, **kw))
    again = quick(m, path, grid=(0.5, 1.0))
    assert len(calls) == 4 and all(c is m for c in calls[1:])  # the lost layer timing, then the dense model (3 rounds)
    assert isinstance(calls[0], nn.Conv2d) and (calls[0].in_channels, calls[0].out_channels) == (4, 3)
    assert again.entries[sig]["ms"][0] == t.entries[sig]["ms"][0]


def test_the_cache_refuses_another_model_input_shape_or_statistic(tmp_path):
    path = tmp_path / "t.json"
    quick(net(4), path, grid=(1.0,))
    with pytest.raises(ConfigError, match="another model"):
        LatencyTable.load(path, net(5), X)
    with pytest.raises(ConfigError, match="input_shape"):
        LatencyTable.load(path, net(4), torch.randn(1, 1, 8, 8))
    with pytest.raises(ConfigError, match="another model"):
        quick(net(5), path)  # a build never mixes two models in one file
    with pytest.raises(ConfigError, match="statistic"):
        LatencyTable.load(path, net(4), X, statistic="p10")
    with pytest.raises(ConfigError, match="does not exist"):
        LatencyTable.load(tmp_path / "none.json", net(4), X)


def _hand_table():
    spec = {"kind": "conv2d", "k": [3, 3], "stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "dw": False,
            "bias": True, "spatial": [6, 6], "in": 4, "out": 4}
    sig = lt._signature(spec)
    # measured times with noise: 2.5 at (in 2, out 2) is above the 2.0 at (in 2, out 4)
    entries = {sig: {"in": [1, 2, 4], "out": [2, 4], "ms": [[1.0, 2.0], [2.5, 2.0], [4.0, 6.0]]}}
    return LatencyTable({}, {"c": spec}, entries, 10.0, (0.5, 1.0))


def test_layer_times_are_interpolated_on_a_monotone_envelope_as_computed_by_hand():
    t = _hand_table()
    # envelope: running max along in, then along out -> [[1, 2], [2.5, 2.5], [4, 6]]
    assert t.layer_ms("c", 2, 4) == pytest.approx(2.5)
    assert t.layer_ms("c", 3, 3) == pytest.approx((2.5 + 2.5) / 2 / 2 + (4.0 + 6.0) / 2 / 2)  # bilinear
    assert t.layer_ms("c", 1, 3) == pytest.approx(1.5)
    assert t.layers_ms() == pytest.approx(6.0)


def test_the_predicted_latency_is_monotone_in_every_width_and_exact_for_the_dense_model():
    m = net(8)
    t = quick(m, grid=(0.25, 0.5, 0.75, 1.0))
    s = Subnets(m, X)
    lat = LatencyModel(s, t)
    assert lat.predict_ms(s.space.full()) == pytest.approx(t.dense_ms) and lat.cost(s.space.full()) == 1.0
    for i in range(len(s.space)):
        costs = []
        for k in range(1, s.space.widths[i] + 1):
            w = list(s.space.full())
            w[i] = k
            costs.append(lat.cost(tuple(w)))
        assert all(b >= a - 1e-12 for a, b in zip(costs, costs[1:])), (i, costs)
    half = s.space.uniform(0.5)
    assert lat.layer_widths(half) == {"0": (1, 4), "1": (4, 4), "3": (4, 3), "4": (3, 3), "8": (3, 3)}
    v = lat.validate([half], warmup=0, runs=2)[0]
    assert v["measured_ms"] > 0 and v["error"] == pytest.approx(v["predicted_ms"] / v["measured_ms"] - 1)


@pytest.mark.parametrize("target,fragment", [("latency=0", "(0, 1]"), ("latency=1.5", "latency=1.5ms"),
                                             ("latency=-2ms", "> 0 ms"), ("latency=fast", "not a latency"),
                                             ("latency=0.5s", "not a latency")])
def test_bad_latency_targets_are_refused_by_name(target, fragment):
    with pytest.raises(ConfigError, match="target=") as e:
        parse_latency_target(target)
    assert fragment in str(e.value)


def test_a_latency_target_without_a_table_is_refused_and_the_model_unchanged():
    m = net()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    batches = [(torch.randn(4, 1, 6, 6), torch.randint(0, 3, (4,)))]
    with pytest.raises(ConfigError, match="latency_table"):
        pk.search(m, X, "latency=0.5", train=batches, val=batches, candidates=2, recal_batches=1)
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())


def synthetic(table: LatencyTable) -> LatencyTable:
    """``table`` with every timing replaced by in x out / 100 ms (a deterministic, monotone cost)."""
    for e in table.entries.values():
        e["ms"] = [[a * b / 100 for b in e["out"]] for a in e["in"]]
    table.dense_ms, table._env = table.layers_ms() + 0.05, {}
    table.calibration = {"widths": [], "measured_ms": 0.0, "residual": 0.05, "act": 0.5}  # a constant residual
    return table


def test_the_search_verb_meets_a_latency_target_as_the_table_predicts(tmp_path):
    m = net(8)
    table = synthetic(quick(m, grid=(0.5, 1.0)))
    table.save(tmp_path / "t.json")
    batches = [(torch.randn(4, 1, 6, 6), torch.randint(0, 3, (4,))) for _ in range(2)]
    r = pk.search(m, X, "latency=0.9", train=batches, val=batches, candidates=3, recal_batches=1, window=0.5,
                  latency_table=str(tmp_path / "t.json"))
    assert r.kind == "latency" and r.latency.table.entries == table.entries
    assert all(t.cost <= 0.9 + 1e-12 for t in r.record.trials)
    assert r.cost(tuple(r.uniform_widths.values())) <= 0.9 + 1e-12
    ms = r.latency.dense_ms * 0.95
    r2 = pk.search(m, X, f"latency={ms}ms", train=batches, val=batches, candidates=2, recal_batches=1, window=0.5,
                   latency_table=table)
    assert r2.limit == pytest.approx(0.95) and r2.best.cost <= 0.95 + 1e-12
    assert np.isfinite(r.as_dict()["latency_dense_ms"])


def test_the_calibration_splits_the_residual_into_overhead_and_activation_work_as_computed_by_hand(tmp_path):
    m = net(8)
    t = synthetic(quick(m, tmp_path / "t.json", grid=(0.5, 1.0)))
    s = Subnets(m, X)
    # dense residual 0.05 ms (synthetic); the half-width copy "measured" with a residual of 0.03 ms at a kept
    # activation fraction of 0.5: c1 = (0.05 - 0.03) / (1 - 0.5) = 0.04 follows the activations, c0 = 0.01 stays
    t.calibration = {"widths": [], "measured_ms": 0.0, "residual": 0.03, "act": 0.5}
    lat = LatencyModel(s, t)
    assert (lat.c0, lat.c1) == (pytest.approx(0.01), pytest.approx(0.04))
    layers, act = lat._layers_and_act(s.space.uniform(0.5))
    assert lat.predict_ms(s.space.uniform(0.5)) == pytest.approx(layers + 0.01 + 0.04 * act)
    t.calibration = None  # measured once on a pruned copy, then kept in the table's file
    LatencyModel(s, t)
    saved = json.loads((tmp_path / "t.json").read_text())["calibration"]
    assert saved["widths"] == list(s.space.uniform(0.5)) and saved["measured_ms"] > 0 and 0 < saved["act"] < 1


def test_an_onnxruntime_table_times_the_exported_layers_and_a_search_reuses_it_with_its_backend(tmp_path):
    pytest.importorskip("onnxruntime")
    m = net(8)
    path = tmp_path / "ort.json"
    t = quick(m, path, grid=(0.5, 1.0), backend="onnxruntime")
    assert t.key["backend"] == "onnxruntime" and LatencyTable.backend_of(path) == "onnxruntime"
    assert t.dense_ms > 0 and all(v >= 0 for e in t.entries.values() for r in e["ms"] for v in r)
    with pytest.raises(ConfigError, match="backend"):  # a torch table is another setting
        LatencyTable.load(path, m, X)
    assert LatencyTable.load(path, m, X, backend="onnxruntime").entries == t.entries
    batches = [(torch.randn(4, 1, 6, 6), torch.randint(0, 3, (4,))) for _ in range(2)]
    state = {k: v.clone() for k, v in m.state_dict().items()}
    r = pk.search(m, X, "latency=1.0", train=batches, val=batches, candidates=2, recal_batches=1, window=0.99,
                  latency_table=str(path))
    assert r.latency.table.key["backend"] == "onnxruntime"  # the file's backend, not torch
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())


def test_a_search_measures_its_table_on_the_clock_asked_for_and_a_later_one_keeps_the_files_setting(tmp_path):
    m = net(8)
    path = tmp_path / "cpu.json"
    batches = [(torch.randn(4, 1, 6, 6), torch.randint(0, 3, (4,))) for _ in range(2)]
    r = pk.search(m, X, "latency=1.0", train=batches, val=batches, candidates=2, recal_batches=1, window=0.99,
                  latency_table=str(path), latency_clock="cpu", latency_statistic="p10")
    assert (r.latency.table.key["clock"], r.latency.table.key["statistic"]) == ("cpu", "p10")
    assert LatencyTable.setting_of(path)["clock"] == "cpu" and LatencyTable.setting_of(tmp_path / "no.json") == {}
    again = pk.search(m, X, "latency=1.0", train=batches, val=batches, candidates=2, recal_batches=1, window=0.99,
                      latency_table=str(path))  # no setting given: the file's, so its timings are reused
    assert again.latency.table.entries == r.latency.table.entries
    with pytest.raises(ConfigError, match="clock"):  # asking for another clock at that path is another table
        pk.search(m, X, "latency=1.0", train=batches, val=batches, candidates=2, recal_batches=1, window=0.99,
                  latency_table=str(path), latency_clock="wall")


def test_the_onnxruntime_clock_times_a_bigger_layer_longer():
    pytest.importorskip("onnxruntime")
    small = lt.time_forward(nn.Conv2d(4, 4, 3), torch.randn(1, 4, 32, 32), backend="onnxruntime", runs=9)
    big = lt.time_forward(nn.Conv2d(64, 64, 3), torch.randn(1, 64, 32, 32), backend="onnxruntime", runs=9)
    assert 0 < small < big


def test_an_unknown_backend_is_refused_by_name():
    with pytest.raises(ConfigError, match="backend='tvm'"):
        quick(net(), backend="tvm")
    with pytest.raises(ConfigError, match="backend='tvm'"):
        lt.time_forward(net(), X, backend="tvm")


def test_a_candidate_that_misses_the_latency_target_as_measured_is_replaced_by_one_under_a_lowered_limit(
        tmp_path, monkeypatch):
    m = net(8)
    table = synthetic(quick(m, grid=(0.5, 1.0)))
    batches = [(torch.randn(4, 1, 6, 6), torch.randint(0, 3, (4,))) for _ in range(2)]
    # the machine runs every cut model 1.2x slower than the table says (narrow layers slower inside the model)
    monkeypatch.setattr(LatencyModel, "measured_fraction", lambda self, widths: min(1.0, 1.2 * self.cost(widths)))
    r = pk.search(m, X, "latency=0.9", train=batches, val=batches, candidates=4, recal_batches=1, window=0.1,
                  latency_table=table, max_ratio=0.9, latency_checks=4)
    first, last = r.checks[0], r.checks[-1]
    assert not first["met"] and first["measured"] == pytest.approx(1.2 * first["predicted"])
    assert last["met"] and last["measured"] <= 0.9 + 1e-9  # the final choice meets the target as measured
    assert last["table_limit"] < 0.9 and r.best.cost <= last["table_limit"] + 1e-12
    assert r.as_dict()["latency_checks"] == r.checks
    trusted = pk.search(m, X, "latency=0.9", train=batches, val=batches, candidates=4, recal_batches=1, window=0.1,
                        latency_table=table, max_ratio=0.9, latency_checks=0)
    assert trusted.checks == [] and trusted.best.cost > 0.9 / 1.2  # without checks the table's choice stands
