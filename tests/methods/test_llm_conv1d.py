"""The one-shot LLM pruners on GPT-2, whose decoder layers are Hugging Face ``Conv1D`` (weight ``[in, out]``):
the same per-output-row selection as on ``nn.Linear``, SparseGPT's update in the right orientation."""
import pytest
import torch

from llm_setups import outside_weights, run_llm, token_calib, tiny_lm

pytest.importorskip("transformers")


def _conv1d_weights(model):
    return {n: m.weight for n, m in model.transformer.h.named_modules() if type(m).__name__ == "Conv1D"}


@pytest.mark.parametrize("mid", ["magnitude-llm", "wanda", "sparsegpt"])
def test_every_conv1d_layer_of_gpt2_loses_half_of_its_weights_in_its_comparison_group_and_nothing_else_changes(mid):
    model = tiny_lm("hf:gpt2-tiny")
    outside = outside_weights(model)
    layers = _conv1d_weights(model)
    assert {n.rpartition(".")[2] for n in layers} == {"c_attn", "c_proj", "c_fc"}  # GPT-2's four kinds of map
    res = run_llm(mid, model, token_calib(), scope="row") if mid != "sparsegpt" else \
        run_llm(mid, model, token_calib())
    assert res.telemetry["sparsity"] == pytest.approx(0.5)
    for name, w in layers.items():
        if mid == "sparsegpt":  # its mask is chosen per block of columns, over all rows together
            assert int((w == 0).sum()) == w.numel() // 2, name
            continue
        zeros_per_output = (w == 0).sum(0)  # a Conv1D's outputs are the columns of its weight
        assert torch.equal(zeros_per_output, torch.full_like(zeros_per_output, w.shape[0] // 2)), name
    assert all(torch.equal(v, dict(model.named_parameters())[k]) for k, v in outside.items())


def test_sparsegpt_on_conv1d_reconstructs_better_than_zeroing_the_same_weights():
    """SparseGPT's update of the kept weights, computed on the [out, in] view of each Conv1D, lowers the layer's
    output error below the error of zeroing the same weights without the update (its telemetry measures both
    on the calibration inputs)."""
    res = run_llm("sparsegpt", tiny_lm("hf:gpt2-tiny"), token_calib())
    t = res.telemetry
    assert 0 < t["rel_error"] < t["rel_error_zeroed"]
    assert len(t["layer_rel_error"]) == 2 * 4  # 2 blocks x (c_attn, attn c_proj, c_fc, mlp c_proj)


def test_wanda_2_4_on_conv1d_keeps_two_of_every_four_consecutive_inputs_of_each_output():
    model = tiny_lm("hf:gpt2-tiny")
    run_llm("wanda", model, token_calib(), pattern="2:4")
    for name, w in _conv1d_weights(model).items():
        groups = (w != 0).t().reshape(w.shape[1], -1, 4).sum(-1)  # [out, in / 4] kept per group of 4 inputs
        assert torch.equal(groups, torch.full_like(groups, 2)), name
