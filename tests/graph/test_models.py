"""Real architectures (random weights, small inputs): torchvision and Hugging Face transformers.

Groups the engine marks approximate (layer norms over the residual stream) are left out of the
equivalence check by clearing them from the plan; every exact group must prune to an identical model.
"""
import copy

import pytest
import torch

import prunekit as pk
from prunekit.measure.macs import count_macs
from prunekit.testing import assert_equivalent, zero_removed_


def _exact_only(plan):
    for g in plan.groups:
        if g.approximate:
            g.channels, g.kept = [], g.width
            for m in g.members:
                m["indices"] = []
    return plan


def _check(model, x, ignore=(), atol=1e-9):
    model = model.double().eval()
    plan = _exact_only(pk.plan(model, x, sparsity=0.5, ignore=list(ignore)))
    twin = copy.deepcopy(model)
    zero_removed_(twin, plan)
    report = pk.prune_(model, plan)
    assert not [s for s in report.skipped if "breaks" in s["reason"]]
    assert_equivalent(twin, model, x, atol=atol, rtol=1e-7)
    assert report.params_after == sum(p.numel() for p in model.parameters())
    assert report.params_after <= 0.8 * report.params_before
    return plan, report


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "regnet_y_400mf"])
def test_torchvision_convnets(name):
    tv = pytest.importorskip("torchvision")
    model = tv.models.get_model(name, weights=None, num_classes=10)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    plan, report = _check(model, x, ignore=["fc"] if name != "mobilenet_v3_small" else ["classifier.3"])
    assert count_macs(model, x).total == plan.predicted["macs_after"] == report.macs_after


def test_torchvision_vit_mlp_and_mha_heads():
    tv = pytest.importorskip("torchvision")
    from torchvision.models.vision_transformer import VisionTransformer

    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=64,
                              num_classes=10)
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    plan, report = _check(model, x, ignore=["heads.head"])
    # nn.MultiheadAttention prunes whole heads (1 of 2 per layer); the embedding group is approximate
    # (layer norms), so the exact check leaves it whole
    for layer in model.encoder.layers:
        attn = layer.self_attention
        assert (attn.num_heads, attn.head_dim, attn.embed_dim) == (1, 8, 16)
        assert attn.in_proj_weight.shape == (24, 16) and attn.out_proj.weight.shape == (16, 8)


def _tiny(kind):
    T = pytest.importorskip("transformers")
    ids = torch.randint(0, 50, (1, 6))
    common = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
    if kind == "llama":
        return T.LlamaForCausalLM(T.LlamaConfig(**common, num_key_value_heads=2)), {"input_ids": ids}, ["lm_head"]
    if kind == "bert":
        return T.BertForSequenceClassification(T.BertConfig(**common)), {"input_ids": ids}, ["classifier"]
    if kind == "gpt2":
        return T.GPT2LMHeadModel(T.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=50)), {"input_ids": ids}, \
            ["lm_head"]


@pytest.mark.parametrize("kind,heads", [("llama", 2), ("bert", 4), ("gpt2", 4)])
def test_hugging_face_heads_and_mlp(kind, heads):
    model, x, ignore = _tiny(kind)
    model.config.use_cache = False
    attn = {"llama": "model.layers.0.self_attn.k_proj.weight", "bert": "bert.encoder.layer.0.attention.self.query.weight",
            "gpt2": "transformer.h.0.attn.c_attn.weight"}[kind]
    dim = 1 if kind == "gpt2" else 0
    plan, _ = _check(model, x, ignore=ignore, atol=1e-8)
    g = next(g for g in plan.groups if any(m["fqn"] == attn and m["dim"] == dim for m in g.members))
    assert g.width == heads and g.kept == heads // 2  # whole heads (LLaMA: whole key/value groups) go
    with torch.no_grad():
        out = model(**x)
    assert out.logits.shape[-1] in (50, 2)
