"""ABCPruner (Lin et al., IJCAI 2020): kept-channel codes searched by an artificial bee colony, fitness after a
short training. The colony's phases on a toy objective are tested in tests/allocate/test_search.py."""
import json

import pytest
import torch

from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods import get_method, load_all
from prunekit.methods.abcpruner import code_widths

from method_setups import search_ctx, trained_tiny_convnet

load_all()

SMALL = {"food_number": 4, "max_cycle": 3, "fitness_steps": 6, "val_images": 16}


def _ctx(model, target="macs=0.5", **options):
    return search_ctx(model, target, **{**SMALL, **options})


def test_a_code_keeps_that_many_tenths_of_each_layer_truncated_as_the_reference_code():
    # 64 * 3 / 10 = 19.2 -> 19; 10 * 9 / 10 = 9; 4 * 1 / 10 = 0.4 -> at least 1; 6 * 7 / 10 = 4.2 -> 4
    assert code_widths([64, 10, 4, 6], [3, 9, 1, 7]) == [19, 9, 1, 4]


def test_the_colony_beats_its_initial_sources_and_the_model_carries_the_best_trained_source():
    m = trained_tiny_convnet()
    res = get_method("abcpruner").run(_ctx(m))
    t = res.telemetry
    assert res.engaged is True and t["best_score"] > t["initial_best"] and t["cycles"] == 3
    assert t["evaluated"] == 4 + 3 * 8 + t["scouts"]  # init, then per cycle 4 employed + 4 onlooker (+ a scout)
    best = res.info["best_so_far"]
    assert all(b <= c for b, c in zip(best, best[1:])) and best[-1] == t["best_score"]
    assert res.info["phases"][:12] == ["init"] * 4 + ["employed"] * 4 + ["onlooker"] * 4
    widths = list(res.info["widths"].values())
    assert [m[0].out_channels, m[3].out_channels] == widths and t["best_cost"] <= 0.5
    grid = [set(code_widths([w] * 9, range(1, 10))) for w in (4, 6)]  # max_preserve 9
    assert all(w in g for w, g in zip(widths, grid))
    # the cut model holds the weights of the winner's fitness training: its held-out accuracy is the fitness
    val = search_ctx(m).val_data
    m.eval()
    with torch.no_grad():
        acc = sum(int((m(x).argmax(1) == y).sum()) for x, y in val) / sum(len(y) for _, y in val)
    assert acc == pytest.approx(t["best_score"])


def test_without_cycles_the_colony_is_a_random_population_and_warns():
    with pytest.warns(MechanismWarning, match="options.max_cycle"):
        res = get_method("abcpruner").run(_ctx(trained_tiny_convnet(), max_cycle=0))
    assert res.engaged is False and res.telemetry["evaluated"] == 4 and res.telemetry["improvement"] == 0.0


@pytest.mark.filterwarnings("ignore::prunekit.errors.MechanismWarning")  # one cycle of 4 sources may not improve
def test_the_record_resumes_the_colony_where_it_stopped(tmp_path):
    path = tmp_path / "abc.json"
    full = get_method("abcpruner").run(_ctx(trained_tiny_convnet(), max_cycle=1))
    with pytest.warns(MechanismWarning):  # stopped inside the initial population
        get_method("abcpruner").run(_ctx(trained_tiny_convnet(), max_cycle=1, evaluations=3, record=str(path)))
    assert json.loads(path.read_text())["evaluations"] == 3
    resumed = get_method("abcpruner").run(_ctx(trained_tiny_convnet(), max_cycle=1, record=str(path)))
    assert resumed.info["scores"] == full.info["scores"] and resumed.info["widths"] == full.info["widths"]


def test_bad_input_leaves_the_model_as_it_was():
    m = trained_tiny_convnet()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ConfigError, match="max_preserve"):
        get_method("abcpruner").run(_ctx(m, max_preserve=11))
    with pytest.raises(ConfigError, match="food_number"):
        get_method("abcpruner").run(_ctx(m, food_number=1))
    with pytest.raises(ConfigError, match="needs val data"):
        ctx = _ctx(m)
        ctx.val_data = None
        get_method("abcpruner").run(ctx)
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())
