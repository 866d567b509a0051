import json

import pytest
import torch
import torch.nn as nn

import prunekit as pk
from prunekit.measure import count_params, measure, size_on_disk


def _has_macs():
    try:
        import prunekit.measure.macs  # noqa: F401
    except ImportError:
        return False
    return True


needs_macs = pytest.mark.skipif(not _has_macs(), reason="prunekit.measure.macs (the MAC counter) not there yet")


def test_measure_lenet300_params_sizes_and_layers():
    m = pk.models.create("lenet300")
    r = measure(m, torch.zeros(1, 1, 28, 28))
    assert r.params == r.nonzero_params == 266610 and r.sparsity == 0.0
    assert {k: (v.params, v.width, v.kind) for k, v in r.per_layer.items()} == {
        "fc1": (784 * 300 + 300, 300, "Linear"), "fc2": (300 * 100 + 100, 100, "Linear"),
        "fc3": (100 * 10 + 10, 10, "Linear")}
    assert r.size_dense == size_on_disk(m) and r.size_sparse == size_on_disk(m, "sparse")
    assert r.size_compressed == size_on_disk(m, "compressed")
    assert r.latency is None
    json.dumps(r.to_dict())  # serialisable
    assert "fc2" in r.table() and "266,610" in str(r)
    quick = measure(m, torch.zeros(1, 1, 28, 28), sizes=False)
    assert (quick.params, quick.size_dense, quick.size_compressed) == (266610, None, None)


def test_measure_reflects_pruned_weights_and_does_not_change_the_model():
    m = pk.models.create("vgg-small")
    with torch.no_grad():
        m.features[0].weight.zero_()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    m.train()
    r = measure(m, torch.zeros(2, 1, 28, 28), latency=True, runs=3, warmup=1)
    bn_biases = 2 * (32 + 64 + 128)  # BN shifts start at zero
    assert r.nonzero_params == r.params - 32 * 9 - bn_biases
    assert r.per_layer["features.0"].sparsity == 1.0 and r.per_layer["features.1"].sparsity == 0.5  # BN: scale 1, shift 0
    assert r.per_layer["features.0"].width == 32 and r.latency.runs == 3
    assert m.training
    for k, v in m.state_dict().items():
        torch.testing.assert_close(v, state[k])  # BN running stats untouched: latency ran in eval mode
    assert count_params(m) == r.params


@needs_macs
def test_measure_macs_by_hand():
    r = measure(pk.models.create("lenet300"), torch.zeros(1, 1, 28, 28))
    assert r.macs == 784 * 300 + 300 * 100 + 100 * 10
    assert {k: v.macs for k, v in r.per_layer.items()} == {"fc1": 235200, "fc2": 30000, "fc3": 1000}
    r5 = measure(pk.models.create("lenet5"), torch.zeros(1, 1, 28, 28))
    assert r5.per_layer["conv1"].macs == 20 * 24 * 24 * 25
    assert r5.per_layer["conv2"].macs == 50 * 8 * 8 * 20 * 25
    assert r5.macs == 20 * 24 * 24 * 25 + 50 * 8 * 8 * 20 * 25 + 800 * 500 + 500 * 10


def test_the_measure_module_is_callable():
    import prunekit.measure as M

    r = M(nn.Linear(4, 2), torch.zeros(1, 4))
    assert (r.params, r.per_layer[""].width) == (10, 2)


@needs_macs
def test_measure_macs_of_sequence_models_by_hand():
    lstm = measure(pk.models.create("lstm", hidden_size=32), torch.zeros(1, 1, 28, 28), sizes=False)
    # 28 steps (rows); each step: 4 gates x 32 units x (28 inputs + 32 hidden)
    assert lstm.per_layer["lstm"].macs == 28 * 4 * 32 * (28 + 32)
    assert lstm.macs == 28 * 4 * 32 * 60 + 32 * 10
    gpt = pk.models.create("gpt-tiny", vocab_size=50, context_length=16, n_layer=1, d_model=32, n_head=4)
    r = measure(gpt, torch.zeros(1, 16, dtype=torch.long), sizes=False)
    t, d = 16, 32
    assert r.per_layer["blocks.0.attn.q_proj"].macs == t * d * d
    assert r.per_layer["blocks.0.attn"].macs == 2 * t * t * d  # q.k and attention.v over all heads
    assert r.per_layer["blocks.0.fc1"].macs == t * d * 4 * d
    assert r.macs == 4 * t * d * d + 2 * t * t * d + 2 * t * d * 4 * d + t * d * 50
    assert r.per_layer["tok_emb"].macs == 0 and r.per_layer["tok_emb"].params == 50 * d


@needs_macs
def test_measure_macs_of_cnns_by_hand():
    def conv(c_in, c_out, k, side):  # MACs of a conv producing a side x side map
        return c_in * c_out * k * k * side * side

    r = measure(pk.models.create("resnet20"), torch.zeros(1, 1, 28, 28), sizes=False)
    stem = conv(1, 16, 3, 28)
    stage1 = 6 * conv(16, 16, 3, 28)
    stage2 = conv(16, 32, 3, 14) + conv(16, 32, 1, 14) + 5 * conv(32, 32, 3, 14)
    stage3 = conv(32, 64, 3, 7) + conv(32, 64, 1, 7) + 5 * conv(64, 64, 3, 7)
    assert r.macs == stem + stage1 + stage2 + stage3 + 64 * 10 == 31021952
    assert r.per_layer["layer2.0.shortcut.0"].macs == conv(16, 32, 1, 14)
    v = measure(pk.models.create("vgg-small"), torch.zeros(1, 1, 28, 28), sizes=False)
    convs = conv(1, 32, 3, 28) + conv(32, 32, 3, 28) + conv(32, 64, 3, 14) + conv(64, 64, 3, 14) \
        + conv(64, 128, 3, 7) + conv(128, 128, 3, 7)
    assert v.macs == convs + 128 * 10 == 29128448
