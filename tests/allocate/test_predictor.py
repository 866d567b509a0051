"""The accuracy predictor block (one-hot encodings, MLP with its own train/validate split, Spearman) and the
evolution finder it guides."""
import numpy as np
import pytest

from prunekit.allocate.predictor import AccuracyPredictor, Encoding, evolve, rankdata, spearman
from prunekit.errors import ConfigError


def test_spearman_by_hand_with_ties():
    # ranks of a: [1, 2.5, 2.5, 4]; of b: [1, 2, 3, 4]; centred dot 4.5 / sqrt(4.5 * 5)
    assert rankdata([1, 5, 5, 9]).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert spearman([1, 5, 5, 9], [0, 1, 2, 3]) == pytest.approx(4.5 / np.sqrt(4.5 * 5))
    assert spearman([1, 1, 1], [1, 2, 3]) == 0.0
    with pytest.raises(ConfigError, match="same length"):
        spearman([1, 2], [1])


def test_one_hot_encoding_and_its_bad_input():
    e = Encoding.of({"g0": [2, 4], "g1": [1, 2, 3], "bits": [4, 8]})
    assert e.width == 7
    assert e.encode([(1, 0, 1)]).tolist() == [[0, 1, 1, 0, 0, 0, 1]]
    assert e.values((1, 0, 1)) == (4, 1, 8)
    with pytest.raises(ConfigError, match="dimension 'g1': choice index 3 out of range 0..2"):
        e.encode([(0, 3, 0)])
    with pytest.raises(ConfigError, match="needs 3 choice indices"):
        e.encode([(0, 1)])
    with pytest.raises(ConfigError, match=r"\['x'\] have no choice"):
        Encoding.of({"x": []})


def _task(n, seed=0):
    """Accuracy = a known additive function of the choices plus small noise: a predictor can learn the ranking."""
    e = Encoding.of({f"d{i}": [0.25, 0.5, 0.75, 1.0] for i in range(6)})
    rng = np.random.default_rng(seed)
    configs = [e.random(rng) for _ in range(n)]
    w = np.array([0.3, 0.2, 0.1, 0.05, 0.02, 0.01])
    y = np.array([float(np.dot(w, np.sqrt(e.values(c)))) for c in configs]) + rng.normal(0, 0.005, n)
    return e, configs, y


def test_predictor_ranks_held_out_configurations_of_a_learnable_task():
    e, configs, y = _task(100)
    p = AccuracyPredictor(e.width, hidden=32, seed=0)
    fit = p.fit(e.encode(configs), y, val_fraction=0.2, epochs=200, batch_size=80)
    assert (fit.n_train, fit.n_val) == (80, 20)
    assert fit.val_spearman >= 0.9 and fit.train_spearman >= 0.9
    assert len(set(fit.val_index)) == 20


def test_predictor_on_random_labels_does_not_rank_held_out_rows():
    e, configs, _ = _task(100)
    y = np.random.default_rng(1).random(100)
    fit = AccuracyPredictor(e.width, hidden=32, seed=0).fit(e.encode(configs), y, epochs=200, batch_size=80)
    assert fit.train_spearman > 0.5 and abs(fit.val_spearman) < 0.35  # memorised, not generalised


def test_predictor_refuses_too_few_rows():
    e, configs, y = _task(4)
    with pytest.raises(ConfigError, match="measure more configurations"):
        AccuracyPredictor(e.width).fit(e.encode(configs), y, val_fraction=0.25)


def test_evolution_finds_the_best_feasible_configuration_of_a_small_space():
    e = Encoding.of({f"d{i}": [1, 2, 3, 4] for i in range(4)})
    weights = np.array([4.0, 3.0, 2.0, 1.0])
    fitness = lambda cs: np.array([float(np.dot(weights, e.values(c))) for c in cs])  # noqa: E731
    feasible = lambda c: sum(e.values(c)) <= 8  # noqa: E731
    r = evolve(e, fitness, feasible, population=20, generations=30, mutate_prob=0.4, seed=0)
    # exhaustive optimum: spend the budget on the heaviest dims: (4, 2, 1, 1) -> 16 + 6 + 2 + 1 = 25
    assert r.fitness == 25.0 and e.values(r.best) == (4, 2, 1, 1)
    assert r.history == sorted(r.history) and len(r.history) == 31  # elitist: the best never gets worse
    top = r.top(3)
    assert top[0] == r.best and len(set(top)) == 3
    assert [f for _, f in r.population] == sorted((f for _, f in r.population), reverse=True)
    random = np.random.default_rng(0)
    rand_best = max(float(np.dot(weights, e.values(c))) for c in (e.random(random) for _ in range(40))
                    if feasible(c))
    assert rand_best < 25.0  # the same number of random draws misses it


def test_evolution_refuses_an_unreachable_constraint():
    e = Encoding.of({"a": [1, 2]})
    with pytest.raises(ConfigError, match="no feasible configuration"):
        evolve(e, lambda cs: np.zeros(len(cs)), lambda c: False, population=4, generations=1, max_tries=50)
