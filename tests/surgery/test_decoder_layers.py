"""Decoder layers: found on gpt-tiny and Hugging Face decoders, removed for real, bad indices refused."""
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.surgery.layers import decoder_layers, remove_layers_


def _gpt(n=3):
    torch.manual_seed(0)
    return pk.models.create("gpt-tiny", num_classes=32, in_channels=1, input_size=8, n_layer=n)


def test_the_decoder_stack_is_found_on_gpt_tiny_and_llama():
    assert decoder_layers(_gpt())[0] == "blocks"
    pytest.importorskip("transformers")
    m = pk.models.create("hf:llama-tiny", num_classes=32, in_channels=1, input_size=8, num_hidden_layers=3)
    name, layers = decoder_layers(m)
    assert name == "model.layers" and len(layers) == 3


def test_a_model_without_attention_blocks_is_refused():
    with pytest.raises(ConfigError, match=r"model=Sequential: my-method prunes a language model's decoder layers"):
        decoder_layers(nn.Sequential(nn.ModuleList([nn.Linear(2, 2)])), method="my-method")


def test_removed_layers_leave_the_list_and_the_rest_keep_their_order():
    m = _gpt(4)
    keep = [m.blocks[0], m.blocks[3]]
    out = remove_layers_(m, [2, 1])
    assert out["removed"] == [1, 2] and out["layers_after"] == 2 and list(m.blocks) == keep
    assert m(torch.zeros(1, 8, dtype=torch.long)).shape == (1, 8, 32)


@pytest.mark.parametrize("idx, match", [([3], r"layer 3 is outside the 3-layer stack 'blocks'"),
                                        ([0, 1, 2], r"would remove all 3 layers of 'blocks'; keep at least one"),
                                        (["a"], r"must be layer numbers")])
def test_bad_indices_are_refused_and_nothing_changes(idx, match):
    m = _gpt()
    layers = list(m.blocks)
    with pytest.raises(ConfigError, match=match):
        remove_layers_(m, idx)
    assert list(m.blocks) == layers


def test_hf_config_layer_count_layer_types_and_layer_idx_follow():
    pytest.importorskip("transformers")
    m = pk.models.create("hf:llama-tiny", num_classes=32, in_channels=1, input_size=8, num_hidden_layers=4)
    m.config.layer_types = ["full_attention", "a", "b", "c"]
    out = remove_layers_(m, [1, 2])
    assert m.config.num_hidden_layers == 2 and m.config.layer_types == ["full_attention", "c"]
    assert out["config_changes"]["num_hidden_layers"] == [4, 2]
    assert [layer.self_attn.layer_idx for layer in m.model.layers] == [0, 1]
