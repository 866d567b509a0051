"""The search block: the space of per-group widths, budgets, the record and resume after an interrupt."""
import json

import numpy as np
import pytest

from prunekit.allocate.search import (SearchBudget, SearchRecord, SearchSpace, random_ratios, run_search,
                                      sample_feasible)
from prunekit.errors import ConfigError


def space():
    return SearchSpace.of(["a", "b", "c"], [16, 8, 4], round_to=1)


def cost(widths):  # a made-up cost: the kept fraction of all channels
    return sum(widths) / 28


def test_widths_snap_to_bounds_and_round_to():
    s = SearchSpace.of(["a", "b"], [16, 10], min_kept=[4, 2], round_to=4)
    assert s.from_ratios([0.9, 0.0]) == (4, 10)  # 16 -> 2 kept, raised to the floor 4; 10 whole
    assert s.from_ratios([0.3, 0.45]) == (12, 8)  # 16 -> 12; 10 -> 6 kept, rounded up to 8
    assert s.clip([1, 100]) == (4, 10)
    assert s.full() == (16, 10)


@pytest.mark.parametrize("kw, match", [
    (dict(names=["a"], widths=[0]), "group 'a' has width 0"),
    (dict(names=["a"], widths=[4], min_kept=5), "leaves no width"),
    (dict(names=[], widths=[]), "no group"),
    (dict(names=["a"], widths=[4], round_to=0), "round_to=0"),
    (dict(names=["a", "b"], widths=[4]), "one name per group"),
])
def test_a_bad_space_is_refused_by_name(kw, match):
    with pytest.raises(ConfigError, match=match):
        SearchSpace.of(**kw)


@pytest.mark.parametrize("kw", [dict(evaluations=0), dict(seconds=0), dict()])
def test_a_budget_of_zero_is_refused(kw):
    with pytest.raises(ConfigError, match="evaluations|seconds"):
        SearchBudget(**kw)


def _proposer(max_ratio=0.8):
    def propose(rng, record):
        return space().from_ratios(random_ratios(rng, 3, max_ratio)), {"seen": len(record.trials)}
    return propose


def test_candidates_over_the_limit_are_counted_but_never_evaluated():
    scored = []

    def evaluate(w):
        scored.append(w)
        return -abs(cost(w) - 0.5)

    rec = run_search(space(), _proposer(), evaluate, cost, 0.5, SearchBudget(evaluations=6), seed=3)
    assert len(rec.trials) == 6 == len(scored)
    assert all(cost(w) <= 0.5 for w in scored)
    assert rec.proposals > 6  # some U(0, 0.8) draws keep more than half the channels
    assert rec.best()[0].score == max(t.score for t in rec.trials)


def test_an_interrupted_search_resumes_where_it_stopped_and_proposes_the_same_candidates(tmp_path):
    full = run_search(space(), _proposer(), lambda w: cost(w), cost, 0.6, SearchBudget(evaluations=8), seed=1)
    path = tmp_path / "record.json"
    calls = []

    def flaky(w):
        calls.append(w)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return cost(w)

    with pytest.raises(KeyboardInterrupt):
        run_search(space(), _proposer(), flaky, cost, 0.6, SearchBudget(evaluations=8), seed=1, path=path)
    saved = json.loads(path.read_text())
    assert saved["evaluations"] == 3  # the record on disk holds every finished evaluation, nothing half-written
    calls.clear()
    resumed = run_search(space(), _proposer(), lambda w: calls.append(w) or cost(w), cost, 0.6,
                         SearchBudget(evaluations=8), seed=1, path=path)
    assert len(calls) == 5  # only the candidates not yet scored
    assert [t.widths for t in resumed.trials] == [t.widths for t in full.trials]
    assert resumed.proposals == full.proposals


def test_a_record_of_another_space_or_limit_is_not_resumed(tmp_path):
    path = tmp_path / "r.json"
    run_search(space(), _proposer(), cost, cost, 0.6, SearchBudget(evaluations=2), path=path)
    with pytest.raises(ConfigError, match="another space or limit"):
        run_search(space(), _proposer(), cost, cost, 0.5, SearchBudget(evaluations=3), path=path)
    other = SearchSpace.of(["a", "b"], [16, 8])
    with pytest.raises(ConfigError, match="another space or limit"):
        SearchRecord.load(path, other, 0.6)


def test_sample_feasible_keeps_only_candidates_inside_the_window():
    rng = np.random.default_rng(0)
    w, n = sample_feasible(space(), cost, 0.5, rng, lambda g: random_ratios(g, 3, 0.9), window=0.05)
    assert w is not None and 0.45 <= cost(w) <= 0.5 and n >= 1
    none, tries = sample_feasible(space(), cost, 0.01, rng, lambda g: random_ratios(g, 3, 0.9), tries=20)
    assert none is None and tries == 20


def test_the_wall_time_budget_stops_the_search():
    import time

    def slow(w):
        time.sleep(0.05)
        return 0.0

    rec = run_search(space(), _proposer(), slow, cost, 0.9, SearchBudget(seconds=0.12))
    assert 2 <= len(rec.trials) <= 4 and rec.seconds >= 0.12
