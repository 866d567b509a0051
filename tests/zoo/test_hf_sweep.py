"""benchmarks/hf_sweep.py: scaled-down default configs, generated inputs, and one architecture end to end."""
import pytest

pytest.importorskip("transformers")

from benchmarks import hf_sweep as hs  # noqa: E402


def test_scaled_config_is_small_and_keeps_token_ids_in_the_vocabulary():
    import transformers

    cfg = hs.scale_config(transformers.GPT2Config())  # default: 12 layers, 768 wide, vocabulary 50257
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.vocab_size) == (2, hs.HIDDEN, hs.HEADS, hs.VOCAB)
    assert cfg.bos_token_id < hs.VOCAB and cfg.eos_token_id < hs.VOCAB  # 50256 by default
    assert cfg.use_cache is False and cfg.num_labels == hs.LABELS


@pytest.mark.parametrize("model_type, cls, keys", [
    ("bert", "BertForSequenceClassification", {"input_ids", "attention_mask"}),
    ("vit", "ViTForImageClassification", {"pixel_values"}),
    ("t5", "T5ForConditionalGeneration", {"input_ids", "attention_mask", "decoder_input_ids"}),
])
def test_inputs_come_from_the_forward_signature(model_type, cls, keys):
    model = hs.build_model(model_type, cls)
    inputs, out = hs.make_inputs(model)
    assert set(inputs) == keys
    assert hs.task_outputs(out) == ["logits"]
    if "pixel_values" in inputs:
        assert tuple(inputs["pixel_values"].shape) == (hs.BATCH, 3, hs.IMAGE, hs.IMAGE)
    else:
        assert int(inputs["input_ids"].max()) < model.config.vocab_size
    if "decoder_input_ids" in inputs:
        assert tuple(out.logits.shape) == (hs.BATCH, hs.DEC_SEQ, model.config.vocab_size)


def test_modality_from_the_signature():
    assert hs.modality_of({"input_ids", "attention_mask"}, False) == "text"
    assert hs.modality_of({"input_ids", "decoder_input_ids"}, True) == "encoder-decoder"
    assert hs.modality_of({"pixel_values"}, False) == "vision"
    assert hs.modality_of({"input_ids", "pixel_values"}, False) == "multimodal"
    assert hs.modality_of({"input_features", "decoder_input_ids"}, True) == "audio"


def test_one_architecture_end_to_end():
    rec = hs.run_arch("hfa:vit/ViTForImageClassification", "prunekit")
    assert rec["status"] == "pass", rec
    assert rec["param_drop"] >= 0.2 and rec["ignore"] == ["classifier"]
    assert rec["config_changes"]["hidden_size"] == [hs.HIDDEN, hs.HIDDEN // 2]
    assert rec["roundtrip"] == "equal"  # save_pretrained -> from_pretrained gives the pruned model's outputs


def test_task_outputs_kept_lets_the_hidden_stream_narrow():
    rec = hs.run_arch("hfa:bert/BertModel", "prunekit-task")
    assert rec["status"] == "pass", rec
    assert rec["task_outputs"] == ["pooler_output"]
    assert [c["output"] for c in rec["outputs_changed"]] == ["last_hidden_state"]
    assert rec["ignore"] == ["pooler.dense"]  # the pooler's dense, found through the tanh by its shape
