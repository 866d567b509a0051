"""After pruning, a Hugging Face model's config describes its new widths: save_pretrained round-trips."""
import pytest
import torch

import prunekit as pk

transformers = pytest.importorskip("transformers")


def _bert():
    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                  vocab_size=100, max_position_embeddings=32)
    return transformers.BertForSequenceClassification(cfg).eval(), transformers.AutoModelForSequenceClassification, \
        ["classifier"]


def _llama():
    cfg = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=128, vocab_size=100, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(cfg).eval(), transformers.AutoModelForCausalLM, ["lm_head"]


@pytest.mark.parametrize("build, expected", [
    (_bert, {"hidden_size": [64, 32], "num_attention_heads": [4, 2], "intermediate_size": [128, 64]}),
    (_llama, {"hidden_size": [64, 32], "intermediate_size": [128, 64], "num_attention_heads": [4, 2],
              "num_key_value_heads": [2, 1]}),
])
def test_pruned_model_saves_and_reloads_with_from_pretrained(build, expected, tmp_path):
    torch.manual_seed(0)
    model, auto, heads = build()
    x = {"input_ids": torch.randint(0, 100, (2, 8))}
    r = pk.prune_(model, example_inputs=x, sparsity=0.5, ignore=heads)
    assert r.config_changes == expected
    assert "model.config updated: hidden_size 64 -> 32" in str(r)
    for k, (_, new) in expected.items():
        assert getattr(model.config, k) == new
    model.save_pretrained(tmp_path)
    again = auto.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**x).logits, model(**x).logits, rtol=0, atol=0)


def test_layers_pruned_to_different_widths_leave_the_config_and_say_why(caplog):
    torch.manual_seed(0)
    model, _, heads = _bert()
    x = {"input_ids": torch.randint(0, 100, (2, 8))}
    before = model.config.to_dict()
    r = pk.prune_(model, example_inputs=x, sparsity=0.25, ignore=heads,
                  per_layer={"bert.encoder.layer.0.intermediate.dense": 0.75})
    assert model.bert.encoder.layer[0].intermediate.dense.out_features != \
        model.bert.encoder.layer[1].intermediate.dense.out_features
    assert r.config_changes == {} and model.config.to_dict() == before
    (note,) = [s for s in r.skipped if s["where"] == "model.config"]
    assert "different widths" in note["reason"] and "prunekit.save" in note["reason"]


def test_plain_models_have_no_config_changes():
    from prunekit.testing import models

    model, x = models()["residual"]()
    assert pk.prune_(model, example_inputs=x, sparsity=0.5).config_changes == {}
