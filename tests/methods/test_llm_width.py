"""llm-width (LLM-Pruner): Taylor group importance by hand, GQA groups whole, exact surgery, telemetry, bad input."""
import copy

import pytest
import torch
import torch.nn.functional as F
from llm_struct_setups import gpt, llama, logits, not_a_language_model, run, same_state, state, text_batches

from prunekit.errors import ConfigError, MechanismWarning
from prunekit.graph import build_graph
from prunekit.methods.llm_width import activation_scores, taylor_scores, width_units

HEAD_DIM = 16  # llama-tiny: hidden 64, 4 query heads, 2 key-value heads


def _grads(model, calib):
    model.zero_grad()
    for x, y in calib:
        out = logits_with_grad(model, x)
        F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def logits_with_grad(model, x):
    out = model(x)
    return getattr(out, "logits", out)


def test_taylor_score_is_the_sum_of_w_times_grad_over_the_kv_group_and_over_the_ffn_neuron_by_hand():
    model, calib = llama(), text_batches(2)
    graph = build_graph(model, calib[0][0][:1])
    units = width_units(model, graph, "both", [0], "model.layers")
    assert [u["kind"] for u in units] == ["heads", "ffn"]
    scores = taylor_scores(model, [u["group"] for u in units], calib)
    model.train(False)
    g = _grads(model, calib)
    p = dict(model.named_parameters())

    def t(name):
        return (p[name].detach().double() * g[name].double()).abs()

    a = "model.layers.0.self_attn."
    heads = [float(t(a + "q_proj.weight")[2 * HEAD_DIM * c:2 * HEAD_DIM * (c + 1)].sum()
                   + t(a + "k_proj.weight")[HEAD_DIM * c:HEAD_DIM * (c + 1)].sum()
                   + t(a + "v_proj.weight")[HEAD_DIM * c:HEAD_DIM * (c + 1)].sum()
                   + t(a + "o_proj.weight")[:, 2 * HEAD_DIM * c:2 * HEAD_DIM * (c + 1)].sum()) for c in range(2)]
    assert len(scores[0]) == 2  # one unit per key-value group: its 2 query heads go with it
    torch.testing.assert_close(torch.tensor(scores[0]), torch.tensor(heads, dtype=torch.float64), rtol=1e-6, atol=0)
    f = "model.layers.0.mlp."
    ffn = t(f + "gate_proj.weight").sum(1) + t(f + "up_proj.weight").sum(1) + t(f + "down_proj.weight").sum(0)
    torch.testing.assert_close(torch.tensor(scores[1]), ffn, rtol=1e-6, atol=0)


def test_activation_score_is_the_l2_norm_of_each_neuron_output_over_the_calibration_tokens():
    model, calib = gpt(), text_batches(2)
    graph = build_graph(model, calib[0][0][:1])
    units = width_units(model, graph, "ffn", [1], "blocks")
    (score,) = activation_scores(model, [u["group"] for u in units], calib)
    acts = []
    hook = model.blocks[1].fc2.register_forward_pre_hook(lambda m, a: acts.append(a[0].detach()))
    for x, _ in calib:
        logits(model, x)
    hook.remove()
    expect = torch.cat([a.reshape(-1, a.shape[-1]) for a in acts]).double().norm(dim=0)
    torch.testing.assert_close(torch.tensor(score), expect, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("make", [gpt, llama], ids=["gpt-tiny", "hf:llama-tiny"])
def test_defaults_remove_heads_and_neurons_uniformly_and_keep_gqa_groups_whole(make):
    model, calib = make(), text_batches(2)
    res = run("llm-width", model, calib, target="macs=0.7")
    t = res.telemetry
    assert res.engaged is True and t["heads_removed"] > 0 and t["neurons_removed"] > 0 and t["gqa_whole"] is True
    assert t["nonzero_scores"] == t["scored_units"]
    assert res.info["kept_macs_fraction"] <= 0.7
    rows = list(res.info["per_layer"].values())
    assert len({(r["query_heads_kept"], r["neurons_kept"]) for r in rows}) == 1  # the same widths in every layer
    layers = model.blocks if make is gpt else model.model.layers
    for layer in layers:  # on the pruned model itself: kept query heads = kept kv heads x group size
        att = layer.attn if make is gpt else layer.self_attn
        q, k = att.q_proj.out_features // HEAD_DIM, att.k_proj.out_features // HEAD_DIM
        assert q == k * (1 if make is gpt else 2) and q < 4
    x = calib[0][0]
    assert logits(model, x).shape[:2] == x.shape


def test_a_neuron_whose_down_column_is_zero_scores_zero_and_its_removal_changes_no_output():
    model, calib = llama(), text_batches(2)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight[:, :100] = 0.0  # neurons 0..99 of every layer write nothing
    x = calib[0][0]
    dense = logits(model, x)
    res = run("llm-width", model, calib, target="params=0.9", units="ffn")
    removed = [r["neurons_removed"] for r in res.info["per_layer"].values()]
    assert res.telemetry["heads_removed"] == 0 and all(0 < n <= 100 for n in removed), removed
    assert model.config.intermediate_size == 172 - removed[0]
    torch.testing.assert_close(logits(model, x), dense, rtol=0, atol=1e-5)


def test_nothing_to_remove_warns_with_the_knob_and_leaves_the_model_as_it_was():
    model, calib = gpt(), text_batches(1)
    before = state(model)
    with pytest.warns(MechanismWarning, match="lower the target"):
        res = run("llm-width", model, calib, target="macs=1.0")
    assert res.engaged is False and res.telemetry["heads_removed"] == res.telemetry["neurons_removed"] == 0
    assert same_state(model, before)


def test_recovery_distils_towards_the_dense_model():
    calib, train = text_batches(2), text_batches(4, seed=1)
    dense = gpt()
    kl = []
    for steps in (0, 4):
        model = copy.deepcopy(dense)
        res = run("llm-width", model, calib, target="macs=0.6", train=train, recovery_steps=steps, recovery_lr=1e-3)
        assert res.info["recovery_steps"] == steps
        kl.append(sum(float(F.kl_div(F.log_softmax(logits(model, x), -1), F.log_softmax(logits(dense, x), -1),
                                     log_target=True, reduction="batchmean")) for x, _ in train))
    assert kl[1] < kl[0]


@pytest.mark.parametrize("case, match", [
    ("lenet", r"model=LeNet5: llm-width prunes a language model's decoder layers.*gpt-tiny"),
    ("heads-too-far", r"target='macs=0.2': removing all but one unit of every heads group.*units='both'"),
    ("skip-all", r"skip_first=1, skip_last=1 leave none of the 2 decoder layers"),
    ("recovery-no-data", r"recovery_steps=2 needs training batches"),
    ("sparsity", r"target='sparsity=0.5'.*write e.g. target='macs=0.5'"),
])
def test_bad_input_is_refused_and_the_model_is_unchanged(case, match):
    model, calib, target, opts = gpt(), text_batches(1), "macs=0.7", {}
    if case == "lenet":
        model, calib = not_a_language_model()
    elif case == "heads-too-far":
        target, opts = "macs=0.2", {"units": "heads"}
    elif case == "skip-all":
        opts = {"skip_first": 1, "skip_last": 1}
    elif case == "recovery-no-data":
        opts = {"recovery_steps": 2}
    elif case == "sparsity":
        target = "sparsity=0.5"
    before = state(model)
    with pytest.raises(ConfigError, match=match):
        run("llm-width", model, calib, target=target, **opts)
    assert same_state(model, before)
