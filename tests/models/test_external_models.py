import pytest
import torch

import prunekit as pk
from prunekit.errors import ConfigError


def test_torchvision_spec_adapts_channels_and_classes():
    pytest.importorskip("torchvision")
    m = pk.models.create("torchvision:resnet18", num_classes=7, in_channels=1, input_size=32)
    assert m.conv1.in_channels == 1 and m.fc.out_features == 7
    assert m(torch.zeros(2, 1, 32, 32)).shape == (2, 7)
    with pytest.raises(ConfigError, match=r"unknown torchvision model spec='resnet19'; did you mean 'resnet1"):
        pk.models.create("torchvision:resnet19")


def test_timm_spec_random_weights():
    pytest.importorskip("timm")
    m = pk.models.create("timm:resnet10t", num_classes=5, in_channels=3, input_size=32)
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 5)
    v = pk.models.create("timm:vit_tiny_patch16_224", num_classes=3, in_channels=1, input_size=32)
    assert v.eval()(torch.zeros(1, 1, 32, 32)).shape == (1, 3)
    with pytest.raises(ConfigError, match=r"unknown timm model spec='resnet10x'"):
        pk.models.create("timm:resnet10x")


@pytest.mark.parametrize("name", ["bert-tiny", "gpt2-tiny", "llama-tiny", "vit-tiny", "t5-tiny"])
def test_hf_configs_build_and_run(name):
    pytest.importorskip("transformers")
    m = pk.models.create(f"hf:{name}", num_classes=4, in_channels=1, input_size=28)
    x = pk.models.example_inputs(m, 2)
    if name == "t5-tiny":
        out = m(input_ids=x, decoder_input_ids=x[:, :5]).logits
        assert out.shape == (2, 5, 1000)
    elif name == "vit-tiny":
        assert m.config.patch_size == 4 and m.config.num_channels == 1
        assert m(x).logits.shape == (2, 4)
    elif name == "bert-tiny":
        assert m(x).logits.shape == (2, 4)
    else:  # causal language models: the vocabulary is num_classes
        assert m.config.vocab_size == 4 and m(x).logits.shape == (2, 28, 4)


def test_hf_llama_tiny_uses_grouped_query_attention():
    pytest.importorskip("transformers")
    m = pk.models.create("hf:llama-tiny")
    attn = m.model.layers[0].self_attn
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features) == (64, 32, 32)
    m2 = pk.models.create("hf:llama-tiny", num_key_value_heads=1)
    assert m2.model.layers[0].self_attn.k_proj.out_features == 16


def test_hf_errors():
    pytest.importorskip("transformers")
    with pytest.raises(ConfigError, match=r"unknown hf config spec='bert-tny'; did you mean 'bert-tiny'"):
        pk.models.create("hf:bert-tny")
    with pytest.raises(ConfigError, match=r"BertConfig has no field\(s\) \['hiden_size'\]"):
        pk.models.create("hf:bert-tiny", hiden_size=32)
    with pytest.raises(ConfigError, match=r"needs a model name after the colon"):
        pk.models.create("timm:")
