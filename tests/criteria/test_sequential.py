import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.criteria.sequential import (block_linears, capture_block_inputs, decoder_blocks,
                                          sequential_calibrate)
from prunekit.errors import ConfigError

VOCAB, SEQ = 64, 16


def _lm(name, seed=0):
    torch.manual_seed(seed)
    return pk.models.create(name, num_classes=VOCAB, in_channels=1, input_size=SEQ)


def _calib(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, VOCAB, (4, SEQ), generator=g), None) for _ in range(n)]


def _full_forward_norms(model, fqn, calib):
    """``||X_j||^2`` of layer ``fqn``'s inputs over ``calib`` in an ordinary forward of the whole model."""
    acc = []
    h = model.get_submodule(fqn).register_forward_pre_hook(lambda m, a: acc.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        for x, _ in calib:
            model(x)
    h.remove()
    x = torch.cat(acc)
    return x.pow(2).sum(0), x.T @ x


@pytest.mark.parametrize("name,first", [("gpt-tiny", "attn.q_proj"), ("hf:llama-tiny", "self_attn.q_proj")])
def test_the_second_block_is_calibrated_on_the_pruned_first_blocks_outputs(name, first):
    model, calib = _lm(name), _calib()
    dense = _lm(name)
    path, blocks = decoder_blocks(model)
    seen = {}

    def prune_block(i, block_name, stats):
        seen[i] = stats
        if i == 0:  # prune block 0 hard: zero half of every Linear of it
            for fqn in stats:
                w = model.get_submodule(fqn).weight
                with torch.no_grad():
                    w[:, : w.shape[1] // 2] = 0

    sequential_calibrate(model, calib, prune_block, gram=True)
    layer = f"{path}.1.{first}"
    got = seen[1][layer]
    pruned_norms, pruned_gram = _full_forward_norms(model, layer, calib)  # block 0 pruned, as the method left it
    dense_norms, _ = _full_forward_norms(dense, layer, calib)
    assert torch.allclose(got.sq_norms, pruned_norms, rtol=1e-4, atol=1e-4)
    assert torch.allclose(got.gram, pruned_gram, rtol=1e-4, atol=1e-3)
    assert got.rows == sum(x.numel() for x, _ in calib)
    assert not torch.allclose(got.sq_norms, dense_norms, rtol=1e-2)  # not the dense block 0's outputs
    # block 0 saw the dense model's inputs (embeddings), the same as a plain forward
    assert torch.allclose(seen[0][f"{path}.0.{first}"].sq_norms,
                          _full_forward_norms(dense, f"{path}.0.{first}", calib)[0], rtol=1e-4, atol=1e-4)


def test_every_linear_of_every_block_is_handed_over_once_and_nothing_is_left_behind():
    model, calib = _lm("hf:llama-tiny"), _calib()
    model.train()
    order = []
    rep = sequential_calibrate(model, calib, lambda i, n, s: order.append((i, sorted(s))))
    _, blocks = decoder_blocks(model)
    assert [i for i, _ in order] == [0, 1] and rep.blocks == 2 and rep.batches == 2
    assert order[1][1] == sorted(block_linears(blocks[1], "model.layers.1"))
    assert len(order[0][1]) == 7  # q, k, v, o, gate, up, down
    assert all(m.training for m in model.modules())  # train flags restored
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert model.config.use_cache in (True, None)  # the cache switch is put back


def test_layer_filter_and_gram_only_on_request():
    model, calib = _lm("gpt-tiny"), _calib(1)
    seen = {}
    sequential_calibrate(model, calib, lambda i, n, s: seen.update(s), layers=lambda f: f.endswith("fc1"))
    assert sorted(seen) == ["blocks.0.fc1", "blocks.1.fc1"] and all(s.gram is None for s in seen.values())


def test_capture_stops_at_the_first_block_and_keeps_its_keyword_inputs():
    model = _lm("hf:llama-tiny")
    _, blocks = decoder_blocks(model)
    ran = []
    h = blocks[1].register_forward_pre_hook(lambda m, a: ran.append(1))
    got = capture_block_inputs(model, blocks[0], _calib(3))
    h.remove()
    assert len(got) == 3 and not ran  # the forward stopped at block 0
    assert got[0].hidden.shape == (4, SEQ, 64)
    assert got[0].kwargs["position_embeddings"] is not None


def test_a_model_without_decoder_blocks_is_refused_with_its_class_name():
    with pytest.raises(ConfigError, match="model=CifarResNet is not a language model"):
        decoder_blocks(pk.models.create("resnet20", num_classes=10, in_channels=1, input_size=8))


def test_no_calibration_data_is_refused():
    with pytest.raises(ConfigError, match="calib=None"):
        sequential_calibrate(_lm("gpt-tiny"), None, lambda *a: None)
    with pytest.raises(ConfigError, match="calib is empty"):
        sequential_calibrate(_lm("gpt-tiny"), [], lambda *a: None)
