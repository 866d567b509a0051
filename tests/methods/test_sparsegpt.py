import pytest
import torch

import prunekit as pk
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.masks import get_pattern
from prunekit.methods.sparsegpt import reconstruction_errors, relative_error, sparsegpt_prune

from llm_setups import block_weights, outside_weights, run_llm, same_state, state, tiny_lm, token_calib


def _correlated_inputs(n=512, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g)


def test_obs_update_of_one_pruned_weight_matches_the_closed_form_on_a_4x4_layer():
    x = _correlated_inputs()
    h = x.T @ x
    w = torch.tensor([[0.01, 1.0, -2.0, 0.5], [1.5, -1.0, 0.7, 2.0], [-1.2, 0.8, 1.1, -0.9], [0.9, 1.3, -0.6, 1.4]])
    new, keep, dead = sparsegpt_prune(w, h, 1 / 16, blocksize=4, damp=0.01)  # one weight of 16: w[0, 0]
    assert dead == 0 and (~keep).nonzero().tolist() == [[0, 0]]
    # by hand: OBS removes w_q and moves the row by -w_q / [H^-1]_qq * H^-1[q, :] (H damped by 1% mean diagonal)
    hd = h + 0.01 * h.diagonal().mean() * torch.eye(4)
    hinv = torch.linalg.inv(hd)
    expect = w.clone()
    expect[0] -= w[0, 0] / hinv[0, 0] * hinv[0]
    assert abs(float(expect[0, 0])) < 1e-5 and torch.allclose(new, expect, atol=1e-4)
    assert torch.equal(new[1:], w[1:])  # rows without a pruned weight are untouched


def test_a_pruned_weight_in_a_later_column_updates_only_the_columns_after_it_with_their_own_inverse():
    x = _correlated_inputs(seed=1)
    h = x.T @ x
    w = torch.tensor([[1.0, 0.02, -2.0, 0.5], [1.5, -1.0, 0.7, 2.0], [-1.2, 0.8, 1.1, -0.9], [0.9, 1.3, -0.6, 1.4]])
    new, keep, _ = sparsegpt_prune(w, h, 1 / 16, blocksize=4, damp=0.01)
    assert (~keep).nonzero().tolist() == [[0, 1]]
    # sequential OBS (the paper's column-by-column reconstruction): column 0 is already fixed, the update uses the inverse of H over columns 1..3
    hd = h + 0.01 * h.diagonal().mean() * torch.eye(4)
    sub = torch.linalg.inv(hd[1:, 1:])
    expect = w.clone()
    expect[0, 1:] -= w[0, 1] / sub[0, 0] * sub[0]
    assert torch.allclose(new, expect, atol=1e-4) and new[0, 0] == w[0, 0]


def test_lazy_batched_blocks_give_the_same_result_as_one_block():
    x = _correlated_inputs(n=400, d=16, seed=2)
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(3))
    h = x.T @ x
    one, k1, _ = sparsegpt_prune(w, h, 0.5, get_pattern("2:4"), blocksize=16)
    lazy, k2, _ = sparsegpt_prune(w, h, 0.5, get_pattern("2:4"), blocksize=4)
    assert torch.equal(k1, k2) and torch.allclose(one, lazy, atol=1e-4)


@pytest.mark.parametrize("nm", ["2:4", "4:8"])
def test_nm_masks_keep_exactly_n_of_every_m_inputs(nm):
    model = tiny_lm()
    res = run_llm("sparsegpt", model, token_calib(), target="sparsity=0.5", pattern=nm)
    n, m = (int(v) for v in nm.split(":"))
    for f, w in block_weights(model).items():
        groups = (w != 0).reshape(w.shape[0], -1, m).sum(-1)
        assert bool((groups == n).all()), f
    assert res.telemetry["sparsity"] == 0.5


def test_dead_inputs_are_zeroed_and_regularised_as_in_the_paper():
    x = _correlated_inputs(d=4)
    x[:, 2] = 0  # input 2 never active: H_22 = 0
    new, keep, dead = sparsegpt_prune(torch.ones(3, 4), x.T @ x, 0.25, blocksize=4)
    assert dead == 1 and bool((new[:, 2] == 0).all()) and not bool(keep[:, 2].any())
    assert torch.isfinite(new).all()


def test_reconstruction_error_sparsegpt_below_wanda_below_magnitude_on_correlated_inputs():
    g = torch.Generator().manual_seed(0)
    d = 64
    scales = torch.exp(torch.linspace(-1.5, 1.5, d))[torch.randperm(d, generator=g)]  # features of unequal size
    x = (torch.randn(2048, d, generator=g) @ (torch.eye(d) + 0.3 * torch.randn(d, d, generator=g))) * scales
    w = torch.randn(32, d, generator=g)
    for sparsity, pattern in ((0.5, None), (0.5, get_pattern("2:4"))):
        e = reconstruction_errors(w, x, sparsity, pattern)
        # measured: 0.0117 < 0.0156 < 0.0798 (sparsity 0.5), 0.0279 < 0.0402 < 0.1468 (2:4)
        assert e["sparsegpt"] < e["wanda"] < e["magnitude"], e


def test_relative_error_is_the_output_error_ratio():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(50, 6, generator=g), torch.randn(3, 6, generator=g)
    w2 = w * (torch.rand(3, 6, generator=g) > 0.5)
    direct = float((x @ (w - w2).T).pow(2).sum() / (x @ w.T).pow(2).sum())
    assert relative_error(w, w2, x.T @ x) == pytest.approx(direct, rel=1e-4)


@pytest.mark.parametrize("name", ["gpt-tiny", "hf:llama-tiny"])
def test_engages_at_its_defaults_and_leaves_embeddings_and_head_dense(name):
    model = tiny_lm(name)
    keys = set(model.state_dict())
    outside = outside_weights(model)
    res = run_llm("sparsegpt", model, token_calib())
    assert res.engaged is True and res.telemetry["rel_error"] < res.telemetry["rel_error_zeroed"]
    assert set(model.state_dict()) == keys  # plain weights: no mask buffers left
    assert same_state(outside, outside_weights(model))
    for f, w in block_weights(model).items():
        assert abs(float((w == 0).float().mean()) - 0.5) < 0.01, f
        assert res.telemetry["layer_sparsity"][f] == pytest.approx(float((w == 0).float().mean()), abs=1e-6)
    assert set(res.telemetry["layer_rel_error"]) == {f.rpartition(".")[0] for f in block_weights(model)}


def test_without_the_update_acting_it_warns_naming_the_damping():
    model = tiny_lm()
    with pytest.warns(MechanismWarning, match="options.damp"):
        res = run_llm("sparsegpt", model, token_calib(), damp=1e6)  # H^-1 ~ I / lambda: no compensation
    assert res.engaged is False


@pytest.mark.parametrize("name,target,options,match", [
    ("gpt-tiny", "sparsity=0.5", {"calib": None}, "needs calib data but calib=None"),
    ("hf:llama-tiny", "sparsity=0.5", {"pattern": "4:8"}, r"options.pattern='4:8'.*mlp.down_proj \(172 inputs\)"),
    ("gpt-tiny", "sparsity=0.6", {"pattern": "2:4"}, r"that pattern's sparsity is 0.5; use target='sparsity=0.5'"),
    ("gpt-tiny", "sparsity=1.5", {}, r"target='sparsity=1.5'.*\[0, 1\)"),
    ("gpt-tiny", "sparsity=0.5", {"pattern": "row"}, r"options.pattern='row'.*'2:4'"),
])
def test_bad_input_is_refused_naming_the_argument_and_the_model_is_unchanged(name, target, options, match):
    model = tiny_lm(name)
    before = state(model)
    calib = options.pop("calib", token_calib())
    with pytest.raises(ConfigError, match=match):
        run_llm("sparsegpt", model, calib, target=target, **options)
    assert same_state(before, state(model))


def test_a_non_language_model_is_refused_and_unchanged():
    model = pk.models.create("resnet20", num_classes=10, in_channels=1, input_size=8)
    before = state(model)
    with pytest.raises(ConfigError, match="model=CifarResNet is not a language model"):
        run_llm("sparsegpt", model, [(torch.randn(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))])
    assert same_state(before, state(model))
