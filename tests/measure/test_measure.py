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
