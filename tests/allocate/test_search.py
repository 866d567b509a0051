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


# ---- the bee colony (ABCPruner) and simulated annealing (AutoCompress) proposers -------------------------------
from prunekit.allocate.search import Annealer, BeeColony, abc_neighbour, anneal_accept  # noqa: E402


def test_a_bee_moves_the_drawn_coordinates_towards_or_away_from_its_partner():
    """x = (5, 5, 5), partner (1, 1, 1): v_j = int(5 + r * 4), r ~ U(-1, 1); the rng draws j = 2, r = -0.48
    (numpy's default_rng(0)): int(5 - 1.9) = 3. Clipping: x = 9, partner 1, r near 1 -> 9 + 8r > 9 -> 9."""
    rng = np.random.default_rng(0)
    assert abc_neighbour(rng, [5, 5, 5], [1, 1, 1], 1, 1, 9) == [5, 5, 3]
    many = [abc_neighbour(np.random.default_rng(s), [9, 9], [1, 1], 2, 1, 9) for s in range(50)]
    assert all(1 <= v <= 9 for c in many for v in c) and any(c != [9, 9] for c in many)
    assert abc_neighbour(np.random.default_rng(1), [4, 4], [4, 4], 2, 1, 9) == [4, 4]  # same source: no move


def _colony(cycles, **kw):
    return BeeColony(3, tuple, food_number=6, food_limit=3, change=2, lo=1, hi=9, cycles=cycles, **kw)


def _quadratic(w):  # a toy objective on 1..9 with its optimum at (2, 7, 5)
    return 100.0 - sum((a - b) ** 2 for a, b in zip(w, (2, 7, 5)))


def test_the_colony_runs_its_phases_in_the_paper_order_and_finds_a_known_optimum():
    sp = SearchSpace.of(["a", "b", "c"], [9, 9, 9])
    found = []
    for seed in range(3):
        bc = _colony(15)
        rec = run_search(sp, bc, _quadratic, lambda w: 0.5, 1.0, SearchBudget(evaluations=bc.max_evaluations()),
                         seed=seed)
        phases = [t.info["phase"] for t in rec.trials]
        assert phases[:18] == ["init"] * 6 + ["employed"] * 6 + ["onlooker"] * 6
        init_best = max(t.score for t in rec.trials[:6])
        best_so_far = np.maximum.accumulate([t.score for t in rec.trials])
        assert rec.best()[0].score >= init_best and (np.diff(best_so_far) >= 0).all()
        assert bc.state(rec.trials)["cycle"] == 15 and len(rec.trials) <= bc.max_evaluations()
        found.append(rec.best()[0].widths)
    assert found.count((2, 7, 5)) >= 2  # 2 of 3 seeds reach the optimum of 729 codes in <= 201 evaluations


def test_greedy_selection_trails_onlooker_odds_and_the_scout_as_computed_by_hand():
    from prunekit.allocate.search import Trial
    bc = BeeColony(2, tuple, food_number=2, food_limit=2, change=1, lo=1, hi=9, cycles=5)

    def t(i, phase, source, code, score):
        return Trial(i, tuple(code), 0.5, score, 0.0, {"phase": phase, "source": source, "code": code})

    trials = [t(0, "init", 0, [1, 1], 0.2), t(1, "init", 1, [5, 5], 0.8),
              t(2, "employed", 0, [2, 1], 0.3),   # better: source 0 becomes (2, 1), trail 0
              t(3, "employed", 1, [4, 5], 0.7)]   # worse: source 1 stays, trail 1
    st = bc.state(trials)
    assert st["sources"] == [[[2, 1], 0.3, 0], [[5, 5], 0.8, 1]] and st["phase"] == "onlooker"
    # onlooker odds: 0.9 * fit / max + 0.1 -> source 0: 0.9 * 0.3 / 0.8 + 0.1 = 0.4375, source 1: 1.0
    picks = [bc(np.random.default_rng(s), type("R", (), {"trials": trials})())[1]["source"] for s in range(400)]
    assert 0.35 < picks.count(0) / 400 < 0.52  # first stop at source 0 w.p. 0.4375, else source 1
    trials += [t(4, "onlooker", 1, [6, 5], 0.6), t(5, "onlooker", 0, [2, 1], 0.3)]  # both fail: trails 2 and 1
    st = bc.state(trials)
    assert st["phase"] == "scout" and [s[2] for s in st["sources"]] == [1, 2]
    _, info = bc(np.random.default_rng(0), type("R", (), {"trials": trials})())
    assert info["phase"] == "scout" and info["source"] == 1  # the source with food_limit trails is abandoned
    st = bc.state(trials + [t(6, "scout", 1, info["code"], 0.1)])
    assert st["scouts"] == 1 and st["cycle"] == 1 and st["sources"][1] == [info["code"], 0.1, 0]


def test_an_infeasible_move_is_drawn_again_and_the_colony_resumes_exactly(tmp_path):
    sp = SearchSpace.of(["a", "b", "c"], [9, 9, 9])
    ok = lambda code: sum(code) <= 12  # noqa: E731
    rec = run_search(sp, _colony(4, feasible=ok), _quadratic, lambda w: 0.5, 1.0,
                     SearchBudget(evaluations=200), seed=1)
    assert all(sum(t.widths) <= 12 for t in rec.trials)
    path = tmp_path / "abc.json"
    part = run_search(sp, _colony(4, feasible=ok), _quadratic, lambda w: 0.5, 1.0, SearchBudget(evaluations=17),
                      seed=1, path=path)
    assert len(part.trials) == 17
    rest = run_search(sp, _colony(4, feasible=ok), _quadratic, lambda w: 0.5, 1.0, SearchBudget(evaluations=200),
                      seed=1, path=path)
    assert [t.widths for t in rest.trials] == [t.widths for t in rec.trials]


def test_the_metropolis_rule_as_computed_by_hand():
    assert anneal_accept(0.9, 0.8, 0.0, 0.99)  # better: always
    assert anneal_accept(0.8, 0.9, 0.1, 0.3) and not anneal_accept(0.8, 0.9, 0.1, 0.4)  # exp(-1) = 0.368
    assert not anneal_accept(0.8, 0.9, 0.0, 0.0)  # T = 0: greedy


def test_annealing_accepts_by_temperature_replays_its_state_and_cools():
    sp = SearchSpace.of(["a", "b"], [10, 10])

    def move(rng, r, temp):
        j = rng.integers(0, 2)
        r[j] = min(0.9, max(0.0, r[j] + rng.choice([-0.1, 0.1])))
        return r

    def to_widths(r):
        return sp.from_ratios(r)

    def score(w):  # best at 3 and 8 kept
        return 1.0 - 0.05 * (abs(w[0] - 3) + abs(w[1] - 8))

    an = Annealer([0.5, 0.5], to_widths, move, t0=0.05, cooling=0.8, steps=30, seed=2)
    rec = run_search(sp, an, score, lambda w: 0.5, 1.0, SearchBudget(evaluations=100), seed=2)
    st = an.state(rec.trials)
    assert len(rec.trials) == 31 and st["accepted"] + st["rejected"] == 30 and st["rejected"] >= 1
    assert to_widths(st["ratios"]) == (3, 8) and st["score"] == 1.0
    assert an.temperature(30) == pytest.approx(0.05 * 0.8 ** 30)
    worse_kept = [ok for t, ok in zip(rec.trials[1:], st["decisions"]) if ok and t.score < 1.0]
    assert worse_kept  # a worse candidate was accepted at some temperature (not a greedy descent)


def test_a_short_fine_tune_evaluator_trains_the_copy_it_is_given():
    import torch
    from torch import nn
    from prunekit.train.subnet_eval import FinetuneEvaluator

    torch.manual_seed(0)
    x = torch.randn(64, 4)
    batches = [(x[i:i + 16], (x[i:i + 16, 0] > 0).long()) for i in range(0, 64, 16)]
    m = nn.Linear(4, 2)
    before = FinetuneEvaluator([], batches, steps=0)(m)
    w0 = m.weight.detach().clone()
    ev = FinetuneEvaluator(batches, batches, steps=40)
    after = ev(m)
    assert len(ev.batches) == 40 and not torch.equal(w0, m.weight) and after > before and ev.calls == 1
    with pytest.raises(ConfigError, match="steps=-1"):
        FinetuneEvaluator(batches, batches, steps=-1)


def test_truncation_leans_moves_down_and_rounding_does_not():
    """x = 5, partner 3: v = 5 + 2r. Truncated, r in (-0.5, 0) gives int(4.x) = 4 and r in (0, 0.5) int(5.x) = 5:
    a move never goes up by less than a whole step; rounded, the two halves are symmetric."""
    def mean_move(rounding):
        vs = [abc_neighbour(np.random.default_rng(s), [5], [3], 1, 1, 9, rounding)[0] for s in range(2000)]
        return float(np.mean(vs)) - 5

    assert mean_move("truncate") < -0.3 and abs(mean_move("nearest")) < 0.1
    with pytest.raises(ConfigError, match="rounding='up'"):
        BeeColony(2, tuple, rounding="up")
