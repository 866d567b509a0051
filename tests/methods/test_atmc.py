"""atmc (Gui et al., NeurIPS 2019): adversarial SGD under a global l0 projection, ADMM k-means quantisation.

Hand checks of the two projections (global top-k over all layers; k-means with the fixed zero centre), the
entry's constraint check (exactly <= k nonzeros, <= 2^bits values per layer), the ADMM pull (with rho > 0 the
kept weights end closer to their quantised values than with rho = 0), PGD batches in the W-steps, the
fine-tune callbacks keeping the model compressed, telemetry and bad input. The robust-accuracy comparison of
the entry is benchmarks/robust_checks.py (docs/methods-adversarial-2.md)."""
import copy

import pytest
import torch

from prunekit.errors import ConfigError, MechanismWarning
from prunekit.masks import get_masks
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.atmc import L0Projection, SparseQuantProjection, SharedCentroids, quantize_kept
from prunekit.train import TrainConfig, fit
from prunekit.train.adversarial import AdversarialTraining

from method_setups import margin_batches, margin_ctx, margin_mlp

load_all()
TINY = {"eps": 0.2, "steps": 3, "bits": 2, "lr": 0.05, "eval_batches": 1}  # rho, intervals: the paper's


data, model = margin_batches, margin_mlp


def ctx(m=None, target="sparsity=0.5", epochs=6, **options):
    return margin_ctx(m, target, epochs, options)


def weights(m):
    return {n: p for n, p in m.named_parameters() if n.endswith("weight")}


def test_quantize_kept_uses_k_means_centres_and_a_fixed_zero_centre():
    v = torch.tensor([0.9, 1.1, 2.9, 3.1, 0.05, -7.0])
    q, idx = quantize_kept(v, torch.tensor([True] * 5 + [False]), bits=2)  # 3 centres + zero
    # seeds 0.05, 1.575, 3.1 -> clusters {0.05}, {0.9, 1.1}, {2.9, 3.1}; 0.05 keeps its own centre; -7 is pruned
    assert q.tolist() == pytest.approx([1.0, 1.0, 3.0, 3.0, 0.05, 0.0])
    assert idx[-1] == -1 and len(set(idx[:5].tolist())) == 3
    q, idx = quantize_kept(torch.tensor([0.1, 0.2, 3.0, 3.2]), torch.ones(4, dtype=torch.bool), bits=1)
    # zero is a fixed centre: 0.1, 0.2 join it, the one free centre settles at 3.1 (plain 1-means: 1.625)
    assert q.tolist() == pytest.approx([0.0, 0.0, 3.1, 3.1])
    assert idx.tolist() == [-1, -1, 0, 0]


def test_the_l0_projection_keeps_the_k_largest_magnitudes_over_all_layers_not_per_layer():
    w = {"a": torch.tensor([5.0, -4.0, 0.1, 3.0]), "b": torch.tensor([0.2, -0.3, 6.0, 0.01])}
    proj = L0Projection({k: v.clone() for k, v in w.items()}, SparseQuantProjection(sparsity=0.5, scope="global"))
    proj.project()
    assert proj.weights["a"].tolist() == [5.0, -4.0, 0.0, 3.0]  # 3 of 4 kept in a, 1 in b: one global ranking
    assert proj.weights["b"].tolist() == [0.0, 0.0, 6.0, 0.0]
    z, kept = SparseQuantProjection(sparsity=0.5, scope="global", bits=1)(w)
    assert sum(int(m.sum()) for m in kept.values()) <= 4
    assert all(len(set(t[t != 0].tolist())) <= 1 for t in z.values())  # 2^1 values per layer: zero and one


def test_at_its_defaults_exactly_k_nonzeros_and_at_most_2_to_the_bits_values_per_layer_and_engaged():
    c = ctx(**TINY)
    res = get_method("atmc").run(c)
    t = res.telemetry
    total = sum(w.numel() for w in weights(c.model).values())
    assert t["budget"] == total // 2 and t["nonzeros"] <= t["budget"]
    assert sum(int((w != 0).sum()) for w in weights(c.model).values()) == t["nonzeros"]
    for w in weights(c.model).values():
        assert torch.unique(w.detach()).numel() <= 2 ** 2  # zero included
    assert t["attacked"] == 60 and t["projections"] == 61 and t["updates"] == 12  # every 5 of 60 batches
    assert t["quant_error_after"] < t["quant_error_before"] and res.engaged is True  # measured 0.209 -> 0.172
    assert set(get_masks(c.model)) == set(weights(c.model))


def test_the_admm_penalty_pulls_the_weights_towards_their_quantised_values():
    strong = get_method("atmc").run(ctx(**{**TINY, "rho": 1.0})).telemetry
    with pytest.warns(MechanismWarning, match="options.rho"):
        res = get_method("atmc").run(ctx(**{**TINY, "rho": 0.0}))
    none = res.telemetry
    assert res.engaged is False
    assert none["quant_error_after"] > none["quant_error_before"]  # measured 0.209 -> 0.242 without the penalty
    assert strong["quant_error_after"] < 0.6 * strong["quant_error_before"]  # measured 0.209 -> 0.104 at rho 1


def test_without_pgd_examples_it_warns_with_the_knob():
    with pytest.warns(MechanismWarning, match=r"options.eps > 0"):
        res = get_method("atmc").run(ctx(**{**TINY, "eps": 0.0}))
    assert res.engaged is False and res.telemetry["attacked"] == 0


def test_pruning_only_variant_skips_the_quantisation():
    c = ctx(**{**TINY, "quantize": False})
    res = get_method("atmc").run(c)
    assert res.telemetry["bits"] == 32 and res.telemetry["updates"] == 0 and res.engaged is True
    assert res.telemetry["nonzeros"] == res.telemetry["budget"]
    assert max(torch.unique(w.detach()).numel() for w in weights(c.model).values()) > 4


def test_the_fine_tune_callbacks_keep_the_model_sparse_quantised_and_train_on_pgd_examples():
    c = ctx(**TINY)
    res = get_method("atmc").run(c)
    share, attack = res.callbacks
    assert isinstance(share, SharedCentroids) and isinstance(attack, AdversarialTraining) and attack.eps == 0.2
    before = {n: w.detach().clone() for n, w in weights(c.model).items()}
    fit(c.model, data(), TrainConfig(epochs=1, lr=0.05, progress=False), callbacks=res.callbacks)
    assert attack.attacked == 10
    moved = False
    for n, w in weights(c.model).items():
        assert torch.equal(w.detach() == 0, before[n] == 0)  # the support is frozen
        assert torch.unique(w.detach()).numel() <= 4  # still 2^bits values
        moved |= not torch.equal(w.detach(), before[n])
    assert moved  # the shared values were trained


@pytest.mark.parametrize("options, fragment", [({"eps": -0.1}, "eps"), ({"bits": 0}, "bits"),
                                               ({"admm_interval": 0}, "admm_interval"), ({"bitz": 4}, "bits")])
def test_bad_options_are_config_errors_and_leave_the_model_unchanged(options, fragment):
    c = ctx(**options)
    before = copy.deepcopy(c.model.state_dict())
    with pytest.raises(ConfigError, match=fragment):
        get_method("atmc").run(c)
    assert all(torch.equal(before[k], v) for k, v in c.model.state_dict().items())


def test_missing_training_data_is_a_config_error():
    with pytest.raises(ConfigError, match="train"):
        get_method("atmc").run(RunContext(model=model(), example_inputs=None, target="sparsity=0.5", options=TINY))
