"""pop: registered as not-meaningful with its reason; its Pareto search over per-stage widths of a model."""
import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError, MechanismWarning
from prunekit.graph import build_graph
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.pop import family_search
from prunekit.train import TrainConfig

load_all()


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


def _ctx(target="macs=0.6", **options):
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 1, 6, 6, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(2)]
    opts = {"multipliers": [0.25, 0.5, 1.0], "stages": 2, "finetune_steps": 1, "val_images": 16,
            "latency_runs": 1, "cost": "macs", **options}  # MACs as the speed axis: no timing noise
    return RunContext(model=_net(), example_inputs=data[0][0][:1], target=target, train_data=data,
                      val_data=data[:1], options=opts)


def test_pop_is_listed_as_not_meaningful_with_the_entrys_reason():
    spec = get_method("pop")
    assert spec.status == "not-meaningful" and "search space" in spec.left_out and "per-device latency" in spec.left_out


def test_pop_search_cuts_candidates_returns_the_front_and_meets_the_target():
    ctx = _ctx()
    dense = build_graph(ctx.model, ctx.example_inputs).macs()
    res = get_method("pop").run(ctx)
    t = res.telemetry
    assert res.engaged is True and t["cut"] >= 1 and t["trained"] + t["cut"] == t["candidates"]
    assert build_graph(res.model, ctx.example_inputs).macs() <= 0.6 * dense
    lat = [f["latency_ms"] for f in res.info["front"]]
    acc = [f["accuracy"] for f in res.info["front"]]
    assert lat == sorted(lat) and all(b > a for a, b in zip(acc, acc[1:]))  # a front: slower only when better
    assert res.info["chosen"]["accuracy"] == max(acc)


def test_exhaustive_order_cuts_nothing_and_warns_with_the_knob():
    with pytest.warns(MechanismWarning, match="widen the grid"):
        res = get_method("pop").run(_ctx(order="exhaustive", cost="latency", clock="cpu"))  # measured latency
    assert res.engaged is False and res.telemetry["cut"] == 0
    assert res.telemetry["trained"] == res.telemetry["candidates"]
    assert all(f["latency_ms"] > 0 and f["latency_ms"] != f["cost"] for f in res.info["front"])


def test_an_unreachable_grid_is_refused_naming_the_multipliers_and_the_model_is_unchanged():
    ctx = _ctx(target="macs=0.15", multipliers=[0.5, 1.0])
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"multipliers=\[0.5, 1.0\].*add a smaller multiplier"):
        get_method("pop").run(ctx)
    assert all(torch.equal(before[k], v) for k, v in ctx.model.state_dict().items())


def test_family_search_trains_only_the_uncut_candidates_of_a_builder():
    calls = []

    def build(w, d):
        calls.append((w, d))
        return nn.Sequential(nn.Flatten(), *[nn.Linear(4 if i == 0 else int(w), int(w)) for i in range(d)],
                             nn.Linear(int(w), 2))

    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,)))]
    known = {(2.0, 1): 0.5, (2.0, 2): 0.6, (4.0, 1): 0.9, (4.0, 2): 0.95}
    fs = family_search(build, [2, 4], [1, 2], example_inputs=torch.randn(1, 4), train=data, val=data,
                       config=TrainConfig(epochs=1, progress=False), known=known, latency=[1.0, 3.0, 2.0, 4.0])
    # known scores and latencies: nothing is built or trained; (2,2) at 3 ms is slower and worse than (4,1)
    assert fs.grid == [(2.0, 1), (2.0, 2), (4.0, 1), (4.0, 2)]
    assert sorted(fs.result.front) == [0, 2, 3] and [f["width"] for f in fs.front()] == [2.0, 4.0, 4.0]
    assert calls == []  # latencies and scores given: nothing built
