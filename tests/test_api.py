import copy

import numpy as np
import pytest
import torch

import prunekit as pk
from prunekit.api import Plan
from prunekit.criteria import CRITERIA, register_criterion
from prunekit.errors import ConfigError, PruneError, TraceError
from prunekit.measure.macs import count_macs
from prunekit.testing import models


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model, state):
    sd = model.state_dict()
    return sd.keys() == state.keys() and all(torch.equal(sd[k], state[k]) for k in state)


def test_plan_changes_nothing_and_lists_exact_indices():
    model, x = models()["chain"]()
    model.train()
    st = _state(model)
    p = pk.plan(model, x, sparsity=0.5, criterion="l1")
    assert _same(model, st) and model.training
    g = next(g for g in p.groups if g.members[0]["fqn"] == "conv1.weight")
    w = model.conv1.weight.detach().abs().sum((1, 2, 3))
    assert g.width == 8 and g.kept == 4
    # criterion="l1" means the paper's score: the producing filter's own |W| (reduce="producer" by default)
    assert p.settings["reduce"] == "producer"
    assert sorted(g.channels) == sorted(torch.argsort(w)[:4].tolist())
    conv2_in = next(m for m in g.members if m["fqn"] == "conv2.weight" and m["dim"] == 1)
    assert conv2_in["indices"] == sorted(g.channels)


def test_plan_json_roundtrip_and_table():
    model, x = models()["residual"]()
    p = pk.plan(model, x, sparsity=0.5)
    q = Plan.from_json(p.to_json())
    assert q.to_dict() == p.to_dict()
    text = str(p)
    assert "params" in text and "stem.weight[0]" in text
    r = pk.prune_(model, q, example_inputs=x)  # a loaded plan re-traces the model
    assert r.params_after == p.predicted["params_after"]


def test_stale_plan_is_refused_and_model_unchanged():
    model, x = models()["chain"]()
    p = pk.plan(model, x, sparsity=0.5)
    pk.prune_(model, p)
    st = _state(model)
    with pytest.raises(ConfigError, match="stale plan"):
        pk.prune_(model, p)
    assert _same(model, st)


def test_report_fields_and_text():
    model, x = models()["concat"]()
    r = pk.prune_(model, example_inputs=x, sparsity=0.5)
    d = r.to_dict()
    assert set(d) >= {"params_before", "params_after", "macs_before", "macs_after", "groups", "skipped"}
    assert any(g["width_after"] < g["width_before"] for g in d["groups"])
    assert any("model output" in s["reason"] for s in d["skipped"])
    assert "MACs" in str(r)


def test_inspect_table_lists_groups_and_reasons():
    model, x = models()["attention_gqa"]()
    ins = pk.inspect(model, x)
    assert sorted(g.width for g in ins.groups) == [2, 16, 24]
    s = str(ins)
    assert "q.weight[0]" in s and "reaches the model output" in s


@pytest.mark.parametrize("kind,frac", [("macs", 0.5), ("params", 0.3)])
def test_target_is_met_by_exact_cost_model(kind, frac):
    model, x = models()["residual"]()
    before = count_macs(model, x).total if kind == "macs" else sum(p.numel() for p in model.parameters())
    r = pk.prune_(model, example_inputs=x, target=f"{kind}={frac}")
    after = count_macs(model, x).total if kind == "macs" else sum(p.numel() for p in model.parameters())
    assert after <= frac * before
    assert after > 0.6 * frac * before  # the search does not overshoot wildly
    assert (r.macs_after if kind == "macs" else r.params_after) == after


def test_global_ranking_prunes_unevenly_and_keeps_total_fraction():
    model, x = models()["chain"]()
    with torch.no_grad():
        model.conv2.weight[:6] *= 0.01  # six weak conv2 filters: global ranking should take them first
    p = pk.plan(model, x, sparsity=0.3, allocation="global", criterion="l1")
    widths = {g.members[0]["fqn"]: (g.width, g.kept) for g in p.groups}
    assert sum(w - k for w, k in widths.values()) == int(0.3 * 20)
    assert widths["conv2.weight"] == (12, 6) and widths["conv1.weight"] == (8, 8)


def test_deprecated_global_keyword_is_allocation_global():
    model, x = models()["chain"]()
    with pytest.warns(DeprecationWarning, match="allocation='global'"):
        old = pk.plan(model, x, sparsity=0.3, global_=True)
    new = pk.plan(model, x, sparsity=0.3, allocation="global")
    assert old.settings["allocation"] == "global" and old.to_dict() == new.to_dict()


@pytest.mark.parametrize("criterion,reduce", [("l1", "producer"), ("l2", "producer"), ("fpgm", "producer"),
                                              ("bn-scale", "group"), ("random", "group")])
def test_default_reduction_follows_the_criterion_and_is_stated(criterion, reduce):
    model, x = models()["residual"]()
    p = pk.plan(model, x, sparsity=0.5, criterion=criterion)
    assert p.settings["reduce"] == reduce and f"criterion {criterion} (reduce={reduce})" in str(p)
    r = pk.prune_(model, p, example_inputs=x)
    assert r.selection == {"criterion": criterion, "reduce": reduce, "allocation": "uniform"}
    assert f"reduce={reduce}" in str(r) and r.to_dict()["selection"]["reduce"] == reduce


def test_group_reduction_stays_available():
    model, x = models()["residual"]()
    p = pk.plan(model, x, sparsity=0.5, criterion="l1", reduce="group")
    q = pk.plan(model, x, sparsity=0.5, criterion="l1", reduce="producer")
    assert p.settings["reduce"] == "group"
    # the whole-group mean of normalised member scores picks other channels than the producers' own |W|
    assert [g.channels for g in p.groups] != [g.channels for g in q.groups]
    assert pk.plan(model, x, sparsity=0.5, criterion="l1").to_dict() == q.to_dict()


def test_round_to_min_channels_and_per_layer():
    model, x = models()["chain"]()
    p = pk.plan(model, x, sparsity=0.3, round_to=4)
    assert sorted((g.width, g.kept) for g in p.groups) == [(8, 8), (12, 12)]  # 8*0.7=5.6 -> 8, 12*.7=8.4->12
    p = pk.plan(model, x, sparsity=0.6, round_to=4)
    assert sorted((g.width, g.kept) for g in p.groups) == [(8, 4), (12, 8)]
    p = pk.plan(model, x, sparsity=0.9, min_channels=3)
    assert sorted(g.kept for g in p.groups) == [3, 3]
    p = pk.plan(model, x, sparsity=0.5, per_layer={"conv2": 0.25})
    assert {g.members[0]["fqn"]: g.kept for g in p.groups} == {"conv1.weight": 4, "conv2.weight": 9}
    p = pk.plan(model, x, per_layer={"re:conv[12]": 0.75})
    assert sorted(g.kept for g in p.groups) == [2, 3]


def test_data_driven_criterion_receives_grads_and_activations():
    seen = {}

    @register_criterion("test-grad-act", needs=("grads", "activations"))
    def crit(view):
        seen[view.fqn] = (view.grad is not None, view.activations is not None, len(view.consumers))
        return (view.weight * view.grad).sum(1).abs()

    try:
        model, x = models()["chain"]()
        st = _state(model)
        calib = [(x, torch.tensor([0, 1])), (x, torch.tensor([2, 3]))]
        p = pk.plan(model, x, sparsity=0.5, criterion="test-grad-act", calib=calib)
        assert _same(model, st) and all(prm.grad is None for prm in model.parameters())
        assert seen["conv1.weight"] == (True, True, 1)
        assert p.predicted["params_after"] < p.predicted["params_before"]
        with pytest.raises(ConfigError, match="calib"):
            pk.plan(model, x, sparsity=0.5, criterion="test-grad-act")
    finally:
        CRITERIA._items.pop("test-grad-act")


# ---- bad input: each a clear error, the model unchanged ----------------------------------------------
BAD = [
    (dict(sparsity=1.0), ConfigError, r"sparsity=1.0 must be a float in \[0, 1\)"),
    (dict(sparsity=-0.1), ConfigError, "sparsity=-0.1"),
    (dict(sparsity=True), ConfigError, "sparsity=True"),
    (dict(sparsity=0.5, criterion="l3"), ConfigError, "unknown criterion criterion='l3'; did you mean 'l[12]'"),
    (dict(sparsity=0.5, ignore=["fcc"]), ConfigError, "'fcc' matches no module; did you mean 'fc'"),
    (dict(sparsity=0.5, ignore=["re:head.*"]), ConfigError, "matches no module"),
    (dict(target="macs=0.0001"), ConfigError, "cannot be reached"),
    (dict(target="flops=0.5"), ConfigError, "unknown target kind 'flops'"),
    (dict(target="macs=2"), ConfigError, r"fraction kept must be in \(0, 1\]"),
    (dict(sparsity=0.5, target="macs=0.5"), ConfigError, "either sparsity= or target="),
    (dict(), ConfigError, "say how much to prune"),
    (dict(sparsity=0.5, reduce="grup"), ConfigError, "did you mean 'group'"),
    (dict(sparsity=0.5, round_to=0), ConfigError, "round_to=0"),
    (dict(sparsity=0.95, allocation="global", min_channels=0), ConfigError, "zero width"),
    (dict(sparsity=0.5, allocation="globl"), ConfigError, "allocation='globl' is not valid; did you mean 'global'"),
    (dict(per_layer={"conv9": 0.5}), ConfigError, "matches no prunable layer; did you mean"),
]


@pytest.mark.parametrize("kwargs,exc,match", BAD)
def test_bad_input_raises_and_leaves_model_unchanged(kwargs, exc, match):
    model, x = models()["chain"]()
    st = _state(model)
    with pytest.raises(exc, match=match):
        pk.prune_(model, example_inputs=x, **kwargs)
    assert _same(model, st)


def test_untraceable_model_and_wrong_device():
    model, x = models()["chain"]()
    st = _state(model)
    with pytest.raises(TraceError, match="could not trace"):
        pk.plan(model, torch.randn(2, 5, 8, 8), sparsity=0.5)
    assert _same(model, st)
    meta_x = x.to("meta")
    with pytest.raises(ConfigError, match="example_inputs are on meta but the model is on cpu"):
        pk.plan(model, meta_x, sparsity=0.5)


def test_inputs_forms_tuple_dict_and_structured_outputs():
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(4, 8)
            self.b = torch.nn.Linear(8, 3)

        def forward(self, x, y=None):
            h = torch.relu(self.a(x + (0 if y is None else y)))
            return {"out": self.b(h), "aux": (self.b(h) * 2,)}

    x = torch.randn(2, 4)
    for inputs in ((x, x), {"x": x, "y": x}):
        model = Two()
        twin = copy.deepcopy(model)
        r = pk.prune_(model, example_inputs=inputs, sparsity=0.5)
        assert model.a.out_features == 4 and r.params_after < r.params_before
        assert model(x, x)["out"].shape == twin(x, x)["out"].shape


def test_activations_are_channel_first_for_linear_and_conv_producers():
    shapes = {}

    @register_criterion("test-act-shape", needs=("activations",))
    def crit(view):
        if view.activations is not None:
            shapes[view.fqn] = tuple(view.activations.shape)
        return view.weight.abs().sum(1)

    try:
        model, x = models()["attention"]()  # linear producers on [B, T, features]
        calib = [(x, None)]
        pk.plan(model, x, sparsity=0.5, criterion="test-act-shape", calib=calib)
        assert shapes["up.weight"] == (24, 2 * 5)  # 24 features x (batch 2 * 5 tokens)
        model, x = models()["chain"]()
        pk.plan(model, x, sparsity=0.5, criterion="test-act-shape", calib=[(x, None)])
        assert shapes["conv1.weight"] == (8, 2 * 8 * 8)
    finally:
        CRITERIA._items.pop("test-act-shape")


def test_move_to_and_model_device_handle_nested_inputs():
    from prunekit.graph.trace import model_device, move_to

    x = {"a": torch.ones(2, dtype=torch.float64), "b": (torch.zeros(1), [torch.ones(1)]), "n": 3}
    moved = move_to(x, "cpu")
    assert moved["n"] == 3 and isinstance(moved["b"], tuple) and isinstance(moved["b"][1], list)
    assert torch.equal(moved["a"], x["a"]) and moved["b"][1][0].device.type == "cpu"
    assert model_device(torch.nn.Linear(2, 2)).type == "cpu"
    assert model_device(torch.nn.ReLU()).type == "cpu"  # no parameters, no buffers: the CPU
