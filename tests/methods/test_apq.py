"""APQ's feature (status not-meaningful): predictor-guided evolutionary search of widths and weight bit-widths.

The predictor and the evolution finder are tested in tests/allocate/test_predictor.py; the entry's check
(Spearman >= 0.7 on held-out configurations, searched within 0.5 point of the best random one) is
benchmarks/apq_check.py (docs/methods-search-7.md). APQ needs held-out "val" batches, so it has its own contract
here, as the other search methods (eagleeye, legr, amc) do.
"""
import copy

import pytest
import torch

from method_setups import search_ctx, trained_tiny_convnet
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.graph import build_graph
from prunekit.methods import get_method, load_all
from prunekit.methods.apq import APQSpace, quantized_weights
from prunekit.api import Subnets

load_all()
SMALL = dict(samples=40, population=16, generations=20, predictor_epochs=60, hidden=32, recal_batches=2,
             val_images=16)


def test_registered_as_not_meaningful_with_the_entrys_reason():
    spec = get_method("apq")
    assert spec.status == "not-meaningful" and "not a pruning method" in spec.left_out
    assert spec.needs == ("train", "val") and spec.kind == "structured"


def test_bitops_and_macs_of_a_configuration_by_hand():
    model = trained_tiny_convnet()
    x = torch.randn(2, 1, 6, 6)
    sub = Subnets(model, x)
    space = APQSpace(sub, "macs", (0.5, 1.0), (4, 8))
    assert space.layers == ["0", "3", "8"] and space.encoding.choices[:2] == ((2, 4), (3, 6))
    per = build_graph(model, x).macs_per_module()  # conv 1->4, conv 4->6 on 6x6, linear 6->3
    # first group at 2 of 4 channels, second at 6 of 6; bits 4, 8, 4
    cfg = (0, 1, 0, 1, 0)
    halved = {"0": per["0"] / 2, "3": per["3"] / 2, "8": per["8"]}
    macs, bitops = space.costs(cfg)
    assert macs == pytest.approx(sum(halved.values()) / sum(per.values()))
    assert bitops == pytest.approx((halved["0"] * 4 + halved["3"] * 8 + halved["8"] * 4) / (sum(per.values()) * 8))


def test_quantized_weights_are_restored_on_exit():
    model = trained_tiny_convnet()
    before = copy.deepcopy(model.state_dict())
    with quantized_weights(model, {"0": 2}):
        assert len(torch.unique(model[0].weight)) <= 3  # 2 bits: -q, 0, +q
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_search_meets_both_budgets_engages_and_returns_a_quantised_compact_model():
    ctx = search_ctx(trained_tiny_convnet(), target="macs=0.6", **SMALL, bitops=0.4)
    dense = build_graph(ctx.model, ctx.example_inputs).macs()
    res = get_method("apq").run(ctx)
    t = res.telemetry
    assert res.engaged is True and t["predictor_val_spearman"] > 0 and t["generations"] == 20
    assert t["measured"] == 41 and t["predicted_candidates"] == 16 + 20 * 12
    assert t["macs"] <= 0.6 and t["bitops"] <= 0.4
    assert build_graph(res.model, ctx.example_inputs).macs() / dense == pytest.approx(t["macs"])
    for name, bits in res.info["bits"].items():  # every layer holds at most 2^bits - 1 distinct values
        w = dict(res.model.named_modules())[name].weight
        assert len(torch.unique(w)) <= 2 ** bits - 1
    assert res.callbacks and type(res.callbacks[0]).__name__ == "WeightSTE"


def test_without_a_search_the_run_warns():
    with pytest.warns(MechanismWarning, match="raise options.samples"):
        res = get_method("apq").run(search_ctx(trained_tiny_convnet(), **dict(SMALL, generations=0)))
    assert res.engaged is False and res.telemetry["generations"] == 0


@pytest.mark.parametrize("options, match", [
    ({"bit_choices": [1, 8]}, r"bit_choices.*ints >= 2"),
    ({"width_choices": [0.0, 1.0]}, r"width_choices.*fractions in \(0, 1\]"),
    ({"bitops": 0.001}, r"not reachable even with every group at its smallest width"),
    ({"samples": 2}, r"options\['samples'\]=2 must be >= 4"),
])
def test_bad_input_is_refused_and_the_model_left_as_it_was(options, match):
    ctx = search_ctx(trained_tiny_convnet(), **dict(SMALL, **options))
    before = copy.deepcopy(ctx.model.state_dict())
    with pytest.raises(ConfigError, match=match):
        get_method("apq").run(ctx)
    assert all(torch.equal(before[k], v) for k, v in ctx.model.state_dict().items())


def test_missing_held_out_data_is_refused():
    ctx = search_ctx(trained_tiny_convnet(), **SMALL)
    ctx.val_data = None
    with pytest.raises(ConfigError, match="needs val data"):
        get_method("apq").run(ctx)


def test_verify_top_keeps_the_best_measured_of_the_predictors_top_candidates():
    plain = get_method("apq").run(search_ctx(trained_tiny_convnet(), target="macs=0.6", **SMALL))
    checked = get_method("apq").run(search_ctx(trained_tiny_convnet(), target="macs=0.6", **SMALL, verify_top=5))
    assert checked.telemetry["measured"] == plain.telemetry["measured"] + 4
    assert checked.telemetry["best_predicted"] == plain.telemetry["best_predicted"]  # the same search
    assert checked.telemetry["best_measured"] >= plain.telemetry["best_measured"]
