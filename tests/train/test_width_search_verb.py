"""pk.search: widths for a target from scored sub-networks; the model is left unchanged."""
import pytest
import torch

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.testing import models


def _setup():
    m, x = models()["residual"]()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, *x.shape[1:], generator=g), torch.randint(0, 2, (8,), generator=g)) for _ in range(3)]
    return m, x, batches


def test_search_leaves_the_model_alone_and_its_plan_cuts_to_the_best_widths():
    m, x, batches = _setup()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    r = pk.search(m, x, "macs=0.6", train=batches, val=batches, candidates=4, recal_batches=2, window=0.2)
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())
    assert len(r.record.trials) == 4 and r.best.score == max(t.score for t in r.record.trials)
    assert all(0.4 <= t.cost <= 0.6 for t in r.record.trials)
    rep = pk.prune_(m, r.plan)
    assert rep.macs_after / rep.macs_before == pytest.approx(r.best.cost)
    assert set(r.widths) == set(r.uniform_widths) and r.as_dict()["record"]["evaluations"] == 4


@pytest.mark.parametrize("kw, match", [
    (dict(target="macs=0.001"), "cannot be reached with max_ratio=0.8"),  # U(0, 0.8) never removes 99.9%: refused
    # before any draw
    (dict(window=1e-6, max_draws=3), "no strategy"),  # reachable, but 3 draws never land 1e-6 below it
    (dict(candidates=0), "budget of zero"),
    (dict(target="latency=0.5"), "needs a latency table"),  # a latency target without latency_table=
    (dict(sampler="grid"), "sampler='grid'"),
    (dict(max_ratio=1.2), "max_ratio=1.2"),
    (dict(window=-0.1), "window=-0.1"),
    (dict(latency_checks=-1), "latency_checks=-1"),
    (dict(executor="dask"), "executor='dask'"),
    (dict(executor="ray", seconds=5.0), "give candidates= instead"),
])
def test_search_bad_input_names_the_argument_and_changes_nothing(kw, match):
    m, x, batches = _setup()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    args = dict(target="macs=0.6", candidates=2, recal_batches=1, window=0.2, max_draws=200)
    args.update(kw)
    with pytest.raises(ConfigError, match=match):
        pk.search(m, x, args.pop("target"), train=batches, val=batches, **args)
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())
