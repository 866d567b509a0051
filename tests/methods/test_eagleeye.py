"""EagleEye (Li et al., ECCV 2020): random layer-wise strategies ranked by adaptive-BN accuracy."""
import json

import pytest
import torch

from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods import get_method, load_all
from prunekit.methods.eagleeye import max_ratio_for

from method_setups import search_ctx, tiny_convnet, trained_tiny_convnet

load_all()


def trained():
    return trained_tiny_convnet()


def _ctx(model, target="macs=0.5", **options):
    return search_ctx(model, target, **{"recal_batches": 3, "window": 0.1, **options})


def test_the_paper_max_ratio_follows_the_target():
    assert [max_ratio_for(k) for k in (0.75, 0.5, 0.25, 0.9)] == [0.4, 0.7, 0.8, 0.4]


def test_the_model_is_cut_to_the_best_scored_strategy_inside_the_window():
    m = trained()
    res = get_method("eagleeye").run(_ctx(m, candidates=6))
    t = res.telemetry
    assert t["evaluated"] == 6 and t["draws"] >= 6 and res.engaged is True
    top = res.info["top"]
    assert top[0]["score"] == max(res.info["scores"]) == t["best_score"]
    assert all(0.4 <= c <= 0.5 for c in res.info["costs"])  # window 0.1 below the target, never above
    widths = res.info["widths"]
    assert [m[0].out_channels, m[3].out_channels] == list(widths.values())
    assert res.info["exact_masking"] is True


def test_the_record_resumes_a_search_without_scoring_its_candidates_again(tmp_path):
    path = tmp_path / "ee.json"
    first = get_method("eagleeye").run(_ctx(trained(), candidates=3, record=str(path)))
    assert json.loads(path.read_text())["evaluations"] == 3
    second = get_method("eagleeye").run(_ctx(trained(), candidates=5, record=str(path)))
    assert second.info["scores"][:3] == first.info["scores"]
    assert second.telemetry["evaluated"] == 5


def test_one_candidate_cannot_tell_strategies_apart_and_warns():
    with pytest.warns(MechanismWarning, match="options.candidates"):
        res = get_method("eagleeye").run(_ctx(tiny_convnet(), candidates=1))
    assert res.engaged is False and res.telemetry["score_spread"] == 0.0


def test_bad_input_leaves_the_model_as_it_was():
    m = tiny_convnet()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ConfigError, match="max_ratio"):  # U(0, 0.01) never removes half of the MACs
        get_method("eagleeye").run(_ctx(m, candidates=2, max_ratio=0.01, max_draws=50))
    with pytest.raises(ConfigError, match="candidates"):
        get_method("eagleeye").run(_ctx(m, candidates=0))
    with pytest.raises(ConfigError, match="structured method"):
        get_method("eagleeye").run(_ctx(m, target="sparsity=0.5"))
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())
