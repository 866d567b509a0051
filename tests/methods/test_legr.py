"""LeGR (Chin et al., CVPR 2020): learned per-layer affine maps of filter norms, one global ranking."""

import numpy as np
import pytest
import torch

from prunekit.allocate.search import SearchSpace, global_ranking_widths
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods import get_method, load_all
from prunekit.methods.legr import mutate, transformed_scores

from method_setups import search_ctx, trained_tiny_convnet

load_all()
def trained():
    return trained_tiny_convnet()


def _ctx(model, target="macs=0.5", **options):
    return search_ctx(model, target, **options)


def test_an_affine_map_changes_the_global_ranking_as_computed_by_hand():
    """Two layers of 4 filters, squared norms a = 1..4 and b = 10..40, cost = kept channels / 8, limit 0.5.
    Identity: the four lowest scores are all of a (floor 1 keeps a's 4): a keeps 1, b loses 1 -> (1, 3).
    alpha_b = 0.01 maps b to 0.1..0.4, below all of a: b keeps 1, a loses 1 -> (3, 1).
    kappa_a = 25 lifts a to 26..29, above b's 10 and 20: b's two lowest go first, then a's two lowest -> (2, 2)."""
    space = SearchSpace.of(["a", "b"], [4, 4])
    base = [np.array([1.0, 2, 3, 4]), np.array([10.0, 20, 30, 40])]

    def cost(w):
        return sum(w) / 8

    assert global_ranking_widths(space, transformed_scores(base, [1, 1], [0, 0]), cost, 0.5) == (1, 3)
    assert global_ranking_widths(space, transformed_scores(base, [1, 0.01], [0, 0]), cost, 0.5) == (3, 1)
    # a + 25 = 26..29: the global order is b10, b20, a26, a27, a28, a29, b30, b40 -> b loses 2, a loses 2
    assert global_ranking_widths(space, transformed_scores(base, [1, 1], [25, 0]), cost, 0.5) == (2, 2)


def test_mutation_perturbs_only_the_drawn_layers():
    rng = np.random.default_rng(0)
    alpha, kappa = np.ones(20), np.zeros(20)
    a2, k2 = mutate(rng, alpha, kappa, [0.5] * 20, 0.1, 1.0, 0.5)
    changed = np.nonzero((a2 != 1) | (k2 != 0))[0]
    assert 1 <= len(changed) <= 2 and (a2 > 0).all()  # int(0.1 * 20) = 2 draws, with replacement


def test_evolution_beats_the_identity_map_and_the_model_ends_at_the_best_widths():
    m = trained()
    res = get_method("legr").run(_ctx(m, population=6, sample=3, generations=18, val_images=16))
    t = res.telemetry
    assert t["evaluated"] == 18 and t["evolved"] == 12
    assert t["best_loss"] <= t["identity_loss"] and res.engaged is (t["best_loss"] < t["identity_loss"])
    assert res.engaged is True
    assert [m[0].out_channels, m[3].out_channels] == list(res.info["widths"].values())
    assert all(w >= 1 for w in res.info["widths"].values()) and t["best_cost"] <= 0.5


def test_without_generations_beyond_the_population_it_warns():
    with pytest.warns(MechanismWarning, match="options.generations"):
        res = get_method("legr").run(_ctx(trained(), population=4, sample=2, generations=4, val_images=16))
    assert res.engaged is False and res.telemetry["evolved"] == 0


def test_tau_hat_trains_a_copy_and_leaves_the_rest_to_the_cut():
    m = trained()
    res = get_method("legr").run(_ctx(m, population=3, sample=2, generations=4, tau_hat=2, val_images=16))
    assert res.telemetry["evaluated"] == 4
    assert res.info["exact_masking"] is None  # every fitness was read on a trained pruned copy, no masked view


def test_bad_input_leaves_the_model_as_it_was():
    m = trained()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ConfigError, match="sample=8 exceeds population=4"):
        get_method("legr").run(_ctx(m, population=4, sample=8))
    with pytest.raises(ConfigError, match="safeguard"):
        get_method("legr").run(_ctx(m, safeguard=1.5))
    with pytest.raises(ConfigError, match="cannot be reached"):  # half of every layer kept: never 10% of the MACs
        get_method("legr").run(_ctx(m, target="macs=0.1", safeguard=0.5, population=2, sample=1, generations=2))
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())


def test_recal_batches_rescore_the_same_candidates_with_batchnorm_re_estimated():
    """The first population is drawn before any score is read, so both runs see the same candidates; with
    BatchNorm re-estimated on 2 training batches their losses change, and the masked views leave the model's
    statistics as they were (the model at the chosen widths ends with its kept channels' running stats)."""
    plain = get_method("legr").run(_ctx(trained(), population=4, sample=2, generations=5, val_images=16))
    m = trained()
    before = {k: v.clone() for k, v in m.state_dict().items() if "running" in k}
    recal = get_method("legr").run(_ctx(m, population=4, sample=2, generations=5, val_images=16,
                                        recal_batches=2))
    a, b = plain.info["losses"][:4], recal.info["losses"][:4]
    assert all(x != y for x, y in zip(a, b))
    kept = recal.info["widths"]["0"]  # the first BN's kept channels carry their original statistics
    assert m[1].running_mean.shape == (kept,)
    assert all(any(torch.isclose(v, before["1.running_mean"]).tolist()) for v in m[1].running_mean)
