import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods._llm import keep_mask
from prunekit.methods.wanda import wanda_scores

from llm_setups import block_weights, outside_weights, run_llm, same_state, state, tiny_lm, token_calib


def test_wanda_score_on_a_hand_example_prunes_the_small_product_not_the_small_weight():
    w = torch.tensor([[1.0, -2.0, 0.5, 3.0],
                      [0.2, 1.0, -4.0, 0.1]])
    norms = torch.tensor([10.0, 1.0, 2.0, 0.1])  # input 0 is an outlier feature, input 3 is nearly silent
    s = wanda_scores(w, norms)
    # |W_ij| * ||X_j||: row 0 = 10, 2, 1, 0.3; row 1 = 2, 1, 8, 0.01
    assert torch.allclose(s, torch.tensor([[10.0, 2.0, 1.0, 0.3], [2.0, 1.0, 8.0, 0.01]]))
    keep = keep_mask(s, 0.5, None, "row")
    assert keep.int().tolist() == [[1, 1, 0, 0], [1, 0, 1, 0]]
    # plain magnitude would drop w[0, 0] = 1.0 in row 0 and keep w[0, 3] = 3.0
    assert keep_mask(w.abs(), 0.5, None, "row").int().tolist() == [[0, 1, 0, 1], [0, 1, 1, 0]]


def test_sequential_run_uses_the_input_norms_of_each_layer():
    model = tiny_lm()
    calib = token_calib()
    dense = tiny_lm()
    res = run_llm("wanda", model, calib)
    # block 0's fc1 reads ln2(x) of the dense prefix: recompute its Wanda mask by hand from a forward of `dense`
    acc = []
    h = dense.blocks[0].fc1.register_forward_pre_hook(lambda m, a: acc.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        for x, _ in calib:
            dense(x)
    h.remove()
    norms = torch.cat(acc).pow(2).sum(0).sqrt()
    expect = keep_mask(wanda_scores(dense.blocks[0].fc1.weight, norms), 0.5, None, "row")
    assert torch.equal(model.blocks[0].fc1.weight != 0, expect)
    assert res.engaged is True and res.telemetry["changed_vs_magnitude"] > 0


@pytest.mark.parametrize("name", ["gpt-tiny", "hf:llama-tiny"])
def test_engages_per_row_at_its_defaults_and_leaves_embeddings_and_head_dense(name):
    model = tiny_lm(name)
    keys, outside = set(model.state_dict()), outside_weights(model)
    res = run_llm("wanda", model, token_calib())
    assert res.engaged is True
    assert set(model.state_dict()) == keys and same_state(outside, outside_weights(model))
    for f, w in block_weights(model).items():  # every output row loses exactly int(in * 0.5) weights
        assert bool(((w == 0).sum(1) == int(w.shape[1] * 0.5)).all()), f


@pytest.mark.parametrize("nm", ["2:4", "4:8"])
def test_nm_masks_keep_exactly_n_of_every_m_inputs(nm):
    model = tiny_lm("hf:llama-tiny")
    ignore = ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"] if nm == "4:8" else []
    run_llm("wanda", model, token_calib(), pattern=nm, ignore=ignore)
    n, m = (int(v) for v in nm.split(":"))
    for f, w in block_weights(model).items():
        if f.rpartition(".")[0] in ignore:
            assert not bool((w == 0).any()), f  # ignored layers stay dense
            continue
        assert bool(((w != 0).reshape(w.shape[0], -1, m).sum(-1) == n).all()), f


class _FlatLM(nn.Module):
    """Every token embeds to the all-ones vector: every input feature has the same norm."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(8, 16)
        nn.init.ones_(self.emb.weight)
        self.blocks = nn.ModuleList([nn.Linear(16, 16)])
        self.head = nn.Linear(16, 8)

    def forward(self, idx):
        return self.head(self.blocks[0](self.emb(idx)))


def test_with_equal_input_norms_the_mask_is_magnitudes_and_it_warns():
    with pytest.warns(MechanismWarning, match="calibration batches of real"):
        res = run_llm("wanda", _FlatLM(), [(torch.randint(0, 8, (4, 16)), None)])
    assert res.engaged is False and res.telemetry["changed_vs_magnitude"] == 0


@pytest.mark.parametrize("name,target,options,match", [
    ("gpt-tiny", "sparsity=0.5", {"calib": None}, "needs calib data but calib=None"),
    ("hf:llama-tiny", "sparsity=0.5", {"pattern": "4:8"}, r"options.pattern='4:8'.*down_proj \(172 inputs\)"),
    ("gpt-tiny", "sparsity=0.7", {"pattern": "2:4"}, r"use target='sparsity=0.5'"),
    ("gpt-tiny", "sparsity=-0.1", {}, r"sparsity=-0.1"),
    ("gpt-tiny", "sparsity=0.5", {"scope": "global"}, r"options\['scope'\]='global' is not one of \['row', 'layer'\]"),
])
def test_bad_input_is_refused_naming_the_argument_and_the_model_is_unchanged(name, target, options, match):
    model = tiny_lm(name)
    before = state(model)
    calib = options.pop("calib", token_calib())
    with pytest.raises(ConfigError, match=match):
        run_llm("wanda", model, calib, target=target, **options)
    assert same_state(before, state(model))


def test_a_non_language_model_is_refused_and_unchanged():
    model = pk.models.create("resnet20", num_classes=10, in_channels=1, input_size=8)
    before = state(model)
    with pytest.raises(ConfigError, match="model=CifarResNet is not a language model"):
        run_llm("wanda", model, [(torch.randn(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))])
    assert same_state(before, state(model))
