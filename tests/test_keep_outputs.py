"""``keep_outputs=``: only the named outputs keep their shapes; the others may narrow, and the report says which did."""
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.api.plans import Plan
from prunekit.errors import ConfigError
from prunekit.recipe import Recipe

transformers = pytest.importorskip("transformers")


def _bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=32)
    return transformers.BertModel(cfg).eval(), {"input_ids": torch.randint(0, 100, (2, 16))}


def _clip():
    torch.manual_seed(0)
    text = transformers.CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, max_position_embeddings=16, bos_token_id=0,
                                       eos_token_id=1, pad_token_id=1)
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=32, patch_size=8)
    cfg = transformers.CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)
    x = {"input_ids": torch.randint(2, 100, (2, 8)), "pixel_values": torch.randn(2, 3, 32, 32)}
    return transformers.CLIPModel(cfg).eval(), x


class TwoHeads(nn.Module):
    """Returns (features, logits): a backbone whose features a user may not need."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                                  nn.ReLU())
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        f = self.body(x)
        return f, self.fc(f.mean((2, 3)))


def _shapes(out) -> dict:
    return {k: tuple(v.shape) for k, v in out.items() if torch.is_tensor(v)}


def test_bert_pooler_only_narrows_the_hidden_stream_and_reports_last_hidden_state():
    model, x = _bert()
    dense_before = _shapes(model(**x))
    whole, _ = _bert()
    r_all = pk.prune_(whole, example_inputs=x, sparsity=0.5)
    r = pk.prune_(model, example_inputs=x, sparsity=0.5, keep_outputs=["pooler_output"])
    after = _shapes(model(**x))
    assert after["pooler_output"] == dense_before["pooler_output"] == (2, 64)
    assert after["last_hidden_state"] == (2, 16, 32)  # the hidden stream narrowed by half
    assert model.embeddings.word_embeddings.weight.shape == (100, 32)
    assert [o["output"] for o in r.outputs_changed] == ["last_hidden_state"]
    assert r.outputs_changed[0]["before"] == (2, 16, 64) and r.outputs_changed[0]["after"] == (2, 16, 32)
    assert "output 'last_hidden_state' changed shape" in str(r)
    # with every output kept the hidden stream stays whole: far fewer parameters go
    assert _shapes(whole(**x))["last_hidden_state"] == (2, 16, 64) and r_all.outputs_changed == []
    assert r.sparsity > r_all.sparsity + 0.2


def test_clip_embeddings_only_narrows_both_towers():
    model, x = _clip()
    before = _shapes(model(**x))
    whole, _ = _clip()
    r_all = pk.prune_(whole, example_inputs=x, sparsity=0.5)
    r = pk.prune_(model, example_inputs=x, sparsity=0.5, keep_outputs=["text_embeds", "image_embeds"])
    out = model(**x)
    assert _shapes(out)["text_embeds"] == before["text_embeds"] and _shapes(out)["image_embeds"] == before["image_embeds"]
    assert out.text_model_output.last_hidden_state.shape[-1] < 32
    assert out.vision_model_output.last_hidden_state.shape[-1] < 32
    assert {o["output"] for o in r.outputs_changed} == {"text_model_output", "vision_model_output"}
    assert r.sparsity > r_all.sparsity + 0.2


def test_tuple_outputs_are_kept_by_index_and_the_plan_round_trips_through_json():
    torch.manual_seed(0)
    model, x = TwoHeads().eval(), torch.randn(2, 3, 8, 8)
    assert len(pk.inspect(model, x).groups) < len(pk.inspect(model, x, keep_outputs=[1]).groups)
    p = pk.plan(model, x, sparsity=0.5, keep_outputs=[1])
    assert p.settings["keep_outputs"] == [1]
    again = Plan.from_json(p.to_json())
    fresh = TwoHeads().eval()
    fresh.load_state_dict(model.state_dict())
    r = pk.prune_(fresh, again, example_inputs=x)  # another model object: traced again with the plan's keep_outputs
    f, logits = fresh(x)
    assert logits.shape == (2, 10) and f.shape[1] == 8  # the last conv's 16 channels halved
    assert r.outputs_changed == [{"output": 0, "before": (2, 16, 8, 8), "after": (2, 8, 8, 8)}]


@pytest.mark.parametrize("keep, match", [
    (["pooler"], r"keep_outputs=\['pooler'\]: the model has no output 'pooler' \(did you mean 'pooler_output'\?\)"
                 r".*outputs: 'last_hidden_state', 'pooler_output'"),
    ([], r"keep_outputs=\[\] keeps no output"),
    (True, r"keep_outputs=True must be 'all'"),
    ([0.5], r"keep_outputs=\[0.5\] must be 'all'"),
])
def test_bad_keep_outputs_names_the_outputs_and_leaves_the_model_as_it_was(keep, match):
    model, x = _bert()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=match):
        pk.prune_(model, example_inputs=x, sparsity=0.5, keep_outputs=keep)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_an_output_holding_no_tensor_cannot_be_kept():
    class WithNone(TwoHeads):
        def forward(self, x):
            f, logits = super().forward(x)
            return logits, None

    with pytest.raises(ConfigError, match=r"output 1 holds no tensor, so it has no shape to keep.*outputs: 0"):
        pk.plan(WithNone().eval(), torch.randn(2, 3, 8, 8), sparsity=0.5, keep_outputs=[1])


def test_recipe_keep_outputs_round_trips_for_a_criterion_and_a_method():
    r = Recipe.from_dict({"method": "criterion:l1", "keep_outputs": ["pooler_output"]})
    assert r.keep_outputs == ("pooler_output",) and r.to_dict()["keep_outputs"] == ["pooler_output"]
    assert Recipe.from_dict(r.to_dict()) == r
    m = Recipe.from_dict({"method": "l1-filter", "keep_outputs": ["pooler_output"]})
    assert Recipe.from_dict(m.to_dict()).keep_outputs == ("pooler_output",)
    with pytest.raises(ConfigError, match=r"keep_outputs=\(\) keeps no output"):
        Recipe.from_dict({"method": "criterion:l1", "keep_outputs": []})


def test_a_registered_method_honours_keep_outputs_through_its_run_context():
    from prunekit.methods import RunContext, get_method, load_all

    load_all()
    x = torch.randn(2, 3, 8, 8)
    torch.manual_seed(0)
    whole, chosen = TwoHeads().eval(), TwoHeads().eval()
    chosen.load_state_dict(whole.state_dict())
    get_method("l1-filter").run(RunContext(model=whole, example_inputs=x, target="macs=0.5"))
    get_method("l1-filter").run(RunContext(model=chosen, example_inputs=x, target="macs=0.5", keep_outputs=[1]))
    assert whole(x)[0].shape[1] == 16  # every output kept: the last conv feeds output 0 and is never narrowed
    assert chosen(x)[0].shape[1] < 16 and chosen(x)[1].shape == (2, 10)  # only the logits kept
    before = {k: v.clone() for k, v in whole.state_dict().items()}
    with pytest.raises(ConfigError, match=r"method 'l1-filter': keep_outputs=\(\) keeps no output"):
        get_method("l1-filter").run(RunContext(model=whole, example_inputs=x, target="macs=0.5", keep_outputs=()))
    assert all(torch.equal(before[k], v) for k, v in whole.state_dict().items())
