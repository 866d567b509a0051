import pytest
import torch

import prunekit as pk
from prunekit.errors import ConfigError, MechanismWarning

from llm_setups import block_weights, outside_weights, run_llm, same_state, state, tiny_lm


def test_per_layer_scope_prunes_the_smallest_magnitudes_of_the_whole_layer():
    model = tiny_lm()
    w0 = model.blocks[0].fc1.weight.detach().clone()
    res = run_llm("magnitude-llm", model, None)
    thresh = w0.abs().flatten().kthvalue(int(w0.numel() * 0.5)).values
    assert torch.equal(model.blocks[0].fc1.weight != 0, w0.abs() > thresh)
    rows = (model.blocks[0].fc1.weight == 0).sum(1)
    assert int(rows.max()) != int(rows.min())  # per layer: rows lose different counts
    assert res.engaged is True and res.telemetry["sparsity"] == 0.5


@pytest.mark.parametrize("name", ["gpt-tiny", "hf:llama-tiny"])
def test_per_row_scope_and_dense_embeddings_and_head(name):
    model = tiny_lm(name)
    keys, outside = set(model.state_dict()), outside_weights(model)
    run_llm("magnitude-llm", model, None, target="sparsity=0.6", scope="row")
    assert set(model.state_dict()) == keys and same_state(outside, outside_weights(model))
    for f, w in block_weights(model).items():
        assert bool(((w == 0).sum(1) == int(w.shape[1] * 0.6)).all()), f


def test_nm_pattern_keeps_exactly_n_of_every_m():
    model = tiny_lm()
    run_llm("magnitude-llm", model, None, pattern="2:4")
    for f, w in block_weights(model).items():
        assert bool(((w != 0).reshape(w.shape[0], -1, 4).sum(-1) == 2).all()), f


def test_at_sparsity_zero_nothing_is_cut_and_it_warns():
    model = tiny_lm()
    before = state(model)
    with pytest.warns(MechanismWarning, match="raise the target"):
        res = run_llm("magnitude-llm", model, None, target="sparsity=0")
    assert res.engaged is False and same_state(before, state(model))


@pytest.mark.parametrize("model_name,target,options,match", [
    ("resnet20", "sparsity=0.5", {}, "model=CifarResNet is not a language model"),
    ("hf:llama-tiny", "sparsity=0.5", {"pattern": "4:8"}, r"down_proj \(172 inputs\) are not divisible by 8"),
    ("gpt-tiny", "sparsity=0.75", {"pattern": "2:4"}, r"use target='sparsity=0.5'"),
    ("gpt-tiny", "sparsity=1", {}, r"must be in \[0, 1\)"),
])
def test_bad_input_is_refused_and_the_model_is_unchanged(model_name, target, options, match):
    model = (pk.models.create("resnet20", num_classes=10, in_channels=1, input_size=8) if model_name == "resnet20"
             else tiny_lm(model_name))
    before = state(model)
    with pytest.raises(ConfigError, match=match):
        run_llm("magnitude-llm", model, None, target=target, **options)
    assert same_state(before, state(model))
