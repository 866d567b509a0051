"""DHP (Li et al., ECCV 2020): hypernetwork latents under a proximal step, stop at the FLOPs target, compact net.

The hypernetwork block itself (generator by hand, zeroed latents, exact conversion) is tested in
tests/train/test_hypernet.py; the entry's Fashion-MNIST check is benchmarks/dhp_check.py (docs/methods-search-7.md).
"""
import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from method_setups import conv_ctx, tiny_convnet
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.graph import build_graph
from prunekit.methods import get_method, load_all

load_all()


def _data(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(8, 1, 6, 6, generator=g) for _ in range(n)]
    return [(x, torch.bucketize(x.mean((1, 2, 3)), torch.tensor([-0.07, 0.07]))) for x in xs]


def _ctx(target="macs=0.5", epochs=2, **options):
    return conv_ctx(tiny_convnet(), _data(), target=target, prune_epochs=epochs, options=options)


def test_proximal_search_stops_at_the_flops_target_and_the_compact_net_is_exact():
    ctx = _ctx(gamma=1.0)
    dense = build_graph(ctx.model, ctx.example_inputs).macs()
    res = get_method("dhp").run(ctx)
    t = res.telemetry
    assert res.engaged is True and t["zeroed"] > 0
    assert t["stopped_at"] is not None and t["stopped_at"] == t["search_steps"] < 24  # stopped before 2 epochs
    assert t["macs_at_stop"] <= 0.5 + 0.01  # the paper's stop rule: target + stop_limit
    assert t["latent_pruned"] > 0 and t["switch_max_abs_diff"] < 1e-4
    assert build_graph(res.model, ctx.example_inputs).macs() <= 0.5 * dense
    assert not any(nn.utils.parametrize.is_parametrized(m) for m in res.model.modules())


def test_a_stronger_proximal_step_stops_the_search_sooner():
    steps = [get_method("dhp").run(_ctx(gamma=g)).telemetry["stopped_at"] for g in (0.5, 2.0)]
    assert None not in steps and steps[1] < steps[0]


def test_without_the_proximal_step_nothing_is_zeroed_and_the_run_warns():
    with pytest.warns(MechanismWarning, match="raise options.gamma"):
        res = get_method("dhp").run(_ctx(gamma=0.0, epochs=1))
    assert res.engaged is False and res.telemetry["zeroed"] == 0
    assert res.telemetry["stopped_at"] is None and res.telemetry["topped_up"] > 0  # the target came from the top-up


def test_without_top_up_the_model_keeps_what_the_latents_chose():
    res = get_method("dhp").run(_ctx(gamma=0.3, epochs=1, top_up=False))
    assert res.telemetry["topped_up"] == 0 and res.telemetry["stopped_at"] is None
    assert res.info["removed"] == res.telemetry["latent_pruned"]


@pytest.mark.parametrize("change, match", [
    ({"prune_epochs": 0}, r"prune_epochs=0: method 'dhp' is a training-time method"),
    ({"target": "params=0.5"}, r"DHP stops its search on a FLOPs ratio"),
    ({"options": {"threshold": 0.0}}, r"options\['threshold'\]=0.0 must be > 0"),
])
def test_bad_input_is_refused_and_the_model_left_as_it_was(change, match):
    ctx = _ctx()
    for k, v in change.items():
        setattr(ctx, k, v)
    before = copy.deepcopy(ctx.model.state_dict())
    with pytest.raises(ConfigError, match=match):
        get_method("dhp").run(ctx)
    after = ctx.model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(nn.utils.parametrize.is_parametrized(m) for m in ctx.model.modules())


def test_a_model_without_convolutions_is_refused_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 3))
    data = [(x.flatten(1), y) for x, y in _data(2)]
    ctx = conv_ctx(model, data, options={"gamma": 1.0})
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match="no convolution"):
        get_method("dhp").run(ctx)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_compact_model_saves_and_loads(tmp_path):
    res = get_method("dhp").run(_ctx(gamma=1.0))
    path = tmp_path / "m.safetensors"
    pk.save(res.model, path)
    loaded = pk.load(path, tiny_convnet)
    x = torch.randn(3, 1, 6, 6)
    res.model.eval(), loaded.eval()
    torch.testing.assert_close(loaded(x), res.model(x))
