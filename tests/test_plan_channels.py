"""pk.plan_channels: remove exactly the channels a caller chose, with everything coupled to them."""
import copy

import pytest
import torch

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.testing import assert_equivalent, models, zero_removed_


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_removes_exactly_the_given_channels_and_their_coupled_slices():
    model, x = models()["residual"]()
    twin = copy.deepcopy(model)
    p = pk.plan_channels(model, x, {"a": [1, 4]})
    (g,) = [g for g in p.groups if g.channels]
    assert g.channels == [1, 4]
    members = {m["fqn"]: m["indices"] for m in g.members}
    assert members["a.weight"] == [1, 4] and members["bn.running_mean"] == [1, 4] and members["b.weight"] == [1, 4]
    kept_rows = model.a.weight.detach()[[0, 2, 3, 5]].clone()
    zero_removed_(twin, p)
    r = pk.prune_(model, p)
    assert tuple(model.a.weight.shape) == (4, 8, 3, 3) and tuple(model.b.weight.shape) == (8, 4, 3, 3)
    assert torch.equal(model.a.weight.detach(), kept_rows)
    assert r.params_after == p.predicted["params_after"] and r.macs_after == p.predicted["macs_after"]
    assert_equivalent(twin, model, x)


def test_a_channel_named_through_any_member_of_a_residual_group_removes_it_everywhere():
    model, x = models()["residual"]()
    p = pk.plan_channels(model, x, {"stem": [0], "c.weight": [0]})  # the same channel twice: allowed
    pk.prune_(model, p)
    assert model.stem.weight.shape[0] == model.b.weight.shape[0] == model.c.weight.shape[0] == 7
    assert model.fc.weight.shape[1] == 7


def test_plan_round_trips_through_json_and_applies_to_an_equal_model():
    model, x = models()["residual"]()
    other = copy.deepcopy(model)
    p = pk.plan_channels(model, x, {"a": [0]})
    loaded = pk.Plan.from_json(p.to_json())
    assert loaded.settings["channels"] == {"a": [0]}
    pk.prune_(other, loaded, example_inputs=x)
    assert other.a.weight.shape[0] == 5


def test_attention_heads_must_be_named_whole():
    model, x = models()["attention"]()
    for part in ([0], [0, 1], [2, 3, 4, 5]):
        with pytest.raises(ConfigError, match=r"only part of a coupled channel of 'q.weight'.*\[0, 1, 2, 3\]"
                           if part[0] == 0 else r"only part of a coupled channel"):
            pk.plan_channels(model, x, {"q": part})
    p = pk.plan_channels(model, x, {"q": [0, 1, 2, 3]})  # one whole head
    (g,) = [g for g in p.groups if g.channels]
    sizes = {m["fqn"]: len(m["indices"]) for m in g.members}
    assert sizes["q.weight"] == 4 and sizes["o.weight"] == 4


@pytest.mark.parametrize("spec, match", [
    ({"stem": [0], "c": [1]}, r"channels\['c'\] and channels\['stem'\] are coupled in one group"),
    ({"fc": [0]}, r"output channels of 'fc.weight' cannot be removed: reaches the model output"),
    ({"a": list(range(6))}, r"removes every channel of group a.weight\[0\]; keep at least one"),
    ({"a": [7]}, r"index 7 outside \[0, 6\)"),
    ({"a": [-1]}, r"index -1 outside \[0, 6\)"),
    ({"a": ["x"]}, r"channels\['a'\]=\['x'\] must be a list of int"),
    ({"stme": [0]}, r"'stme' is neither a module.*did you mean 'stem'"),
    ({}, r"channels=\{\} must be a non-empty dict"),
])
def test_bad_channels_are_clear_errors_and_the_model_is_untouched(spec, match):
    model, x = models()["residual"]()
    before = _state(model)
    with pytest.raises(ConfigError, match=match):
        pk.plan_channels(model, x, spec)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
