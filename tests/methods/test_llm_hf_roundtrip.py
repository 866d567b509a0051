"""A pruned hf:llama-tiny saves with save_pretrained and loads with from_pretrained to identical logits."""
import pytest
import torch
from llm_struct_setups import llama, logits, run, same_state, state, text_batches

import prunekit as pk
from prunekit.errors import ConfigError

transformers = pytest.importorskip("transformers")


def _prune(how, model, calib):
    if how == "llm-width":
        res = run("llm-width", model, calib, target="macs=0.7")
        assert res.telemetry["heads_removed"] > 0 and res.telemetry["neurons_removed"] > 0
    elif how == "llm-depth":
        res = run("llm-depth", model, calib, layers=1)
        assert len(model.model.layers) == model.config.num_hidden_layers == 2
    else:  # a plain unstructured mask, finalised to plain weights
        pk.sparsify_(model, sparsity=0.5, ignore=["lm_head"])
        pk.finalize_(model)
        assert float((model.model.layers[0].mlp.up_proj.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("how", ["llm-width", "llm-depth", "unstructured"])
def test_pruned_llama_round_trips_through_save_pretrained_with_identical_logits(how, tmp_path):
    model, calib = llama(n_layer=3 if how == "llm-depth" else 2), text_batches(2)
    _prune(how, model, calib)
    x = calib[0][0]
    before = logits(model, x)
    model.save_pretrained(tmp_path)
    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.dtype == torch.float32
    assert torch.equal(logits(loaded, x), before)
    assert {k: tuple(v.shape) for k, v in loaded.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_llm_width_refuses_uneven_layers_on_a_hugging_face_model():
    model, calib = llama(n_layer=3), text_batches(1)
    before = state(model)
    with pytest.raises(ConfigError, match=r"skip_first=1, skip_last=0: a Hugging Face config holds one head count"):
        run("llm-width", model, calib, skip_first=1)
    assert same_state(model, before)
