"""llm-depth (ShortGPT): Block Influence by hand, an identity layer goes first, real removal, bad input."""
import pytest
import torch
import torch.nn.functional as F
from llm_struct_setups import gpt, llama, logits, not_a_language_model, run, same_state, state, text_batches

from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods.llm_depth import block_influence, layers_to_remove


def _identity_(block):
    """Zero the block's writes into the residual stream: x + 0 + 0, the block is an identity."""
    with torch.no_grad():
        for lin in (block.attn.o_proj, block.fc2):
            lin.weight.zero_()
            lin.bias.zero_()


def test_block_influence_by_hand_and_an_identity_layer_scores_zero():
    model, calib = gpt(), text_batches(2)
    _identity_(model.blocks[1])
    bi = block_influence(model, calib)
    cos = []
    for x, _ in calib:  # by hand: the hidden state entering and leaving block 0
        h = model.tok_emb(x) + model.pos_emb(torch.arange(x.shape[1]))
        with torch.no_grad():
            cos.append(F.cosine_similarity(h.double(), model.blocks[0](h).double(), dim=-1).flatten())
    assert bi[0] == pytest.approx(1 - float(torch.cat(cos).mean()), abs=1e-12)
    assert bi[1] == pytest.approx(0.0, abs=1e-12) and bi[0] > 0.01


def test_the_identity_layer_is_removed_first_and_the_logits_do_not_change():
    model, calib = gpt(n_layer=3), text_batches(2)
    _identity_(model.blocks[1])
    x = calib[0][0]
    dense = logits(model, x)
    kept = model.blocks[0], model.blocks[2]
    res = run("llm-depth", model, calib, layers=1)
    assert res.engaged is True and res.telemetry["removed"] == [1]
    assert min(res.telemetry["influence"]) == res.telemetry["influence"][1] == 0.0
    assert len(model.blocks) == 2 and model.blocks[0] is kept[0] and model.blocks[1] is kept[1]
    assert torch.equal(logits(model, x), dense)


def test_layers_go_in_increasing_influence_until_the_target_is_met():
    assert layers_to_remove([0.3, 0.0, 0.2, 0.5], [10] * 4, 50, frac=0.7) == [1, 2]  # 50 -> 40 -> 30 <= 35
    assert layers_to_remove([0.3, 0.0, 0.2, 0.5], [10] * 4, 50, frac=0.8) == [1]
    assert layers_to_remove([0.3, 0.0, 0.2, 0.5], [10] * 4, 50, count=3) == [0, 1, 2]
    assert layers_to_remove([0.1, 0.1], [10, 10], 30, frac=0.1) == [1]  # ties: the later layer; one always stays


def test_hf_layers_are_removed_for_real_with_config_and_layer_idx_following_and_generation_works():
    model, calib = llama(n_layer=4), text_batches(2)
    res = run("llm-depth", model, calib, target="macs=0.75")
    removed = res.telemetry["removed"]
    assert res.engaged is True and len(removed) >= 1 and res.info["kept_macs_fraction"] <= 0.75
    infl = res.telemetry["influence"]
    assert sorted(infl)[:len(removed)] == sorted(infl[i] for i in removed)  # the lowest influences went
    n = 4 - len(removed)
    assert len(model.model.layers) == model.config.num_hidden_layers == n
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == list(range(n))
    x = calib[0][0][:1, :4]
    out = model.generate(x, max_new_tokens=4, do_sample=False, use_cache=True)
    assert out.shape == (1, 8)
    nocache = model.generate(x, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(out, nocache)  # the cache slots follow the renumbered layers


def test_no_layer_removed_warns_with_the_knob():
    model, calib = gpt(), text_batches(1)
    before = state(model)
    with pytest.warns(MechanismWarning, match="options.layers=N"):
        res = run("llm-depth", model, calib, target="macs=1.0")
    assert res.engaged is False and res.telemetry["removed"] == [] and same_state(model, before)


@pytest.mark.parametrize("case, match", [
    ("lenet", r"model=LeNet5: llm-depth prunes a language model's decoder layers.*gpt-tiny"),
    ("all-layers", r"options.layers=2 would remove all 2 decoder layers of 'blocks'; give at most 1"),
    ("unreachable", r"target='macs=0.1': removing all but one of the 2 decoder layers still keeps 0\.\d+ of the macs"),
    ("no-calib", r"needs calib data but calib=None"),
])
def test_bad_input_is_refused_and_the_model_is_unchanged(case, match):
    model, calib, target, opts = gpt(), text_batches(1), "macs=0.7", {}
    if case == "lenet":
        model, calib = not_a_language_model()
    elif case == "all-layers":
        opts = {"layers": 2}
    elif case == "unreachable":
        target = "macs=0.1"
    before = state(model)
    with pytest.raises(ConfigError, match=match):
        if case == "no-calib":
            from prunekit.methods import RunContext, get_method
            get_method("llm-depth").run(RunContext(model=model, example_inputs=calib[0][0][:1], target=target))
        else:
            run("llm-depth", model, calib, target=target, **opts)
    assert same_state(model, before) and len(model.blocks if case != "lenet" else [0]) >= 1
