import pytest
import torch
from torch import nn

from prunekit.masks import get_masks, sparsify_
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.deep_compression import (decode, encode, huffman_lengths, kmeans_1d, share_weights_)
from prunekit.train import TrainConfig


def test_kmeans_linear_init_and_huffman_lengths():
    c, a = kmeans_1d(torch.tensor([-1.0, -0.9, 0.0, 0.95, 1.0]), 3)
    assert c.tolist() == pytest.approx([-0.95, 0.0, 0.975])
    lengths = huffman_lengths({0: 45, 1: 13, 2: 12, 3: 16, 4: 9, 5: 5})
    assert sum(45 * 0 + lengths[s] * n for s, n in {0: 45, 1: 13, 2: 12, 3: 16, 4: 9, 5: 5}.items()) == 224


def test_encode_decode_round_trip_and_huffman_beats_fixed_width():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Conv1d(1, 4, 3))
    sparsify_(model, sparsity=0.9)
    books = share_weights_(model, bits_fc=4, bits_conv=5)
    assert len(torch.unique(model[0].weight.detach()[get_masks(model)["0.weight"]])) <= 16
    blob = encode(model, books)
    fixed = encode(model, books, huffman=False)
    state = decode(blob)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(state[k], v.float())
    for k, v in decode(fixed).items():
        torch.testing.assert_close(v, model.state_dict()[k].float())
    assert len(blob) <= len(fixed)


def test_method_reports_real_sizes_and_keeps_shared_values():
    load_all()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8 * 16, 40, generator=g)
    data = [(x[i:i + 16], x[i:i + 16, :4].argmax(1)) for i in range(0, len(x), 16)]
    model = nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 4))
    ctx = RunContext(model=model, example_inputs=None, target="sparsity=0.9", train_data=data,
                     options={"rounds": 2, "bits_fc": 3}, train_config=TrainConfig(epochs=1, lr=0.05, progress=False))
    res = get_method("deep-compression").run(ctx)
    info = res.info
    assert info["dense_bytes"] == 4 * (40 * 64 + 64 + 64 * 4 + 4)
    assert info["compressed_bytes"] == len(encode(model, res.callbacks[0].books))
    assert info["ratio"] == pytest.approx(info["dense_bytes"] / info["compressed_bytes"])
    for fqn, m in get_masks(model).items():
        assert len(torch.unique(model.get_parameter(fqn).detach()[m])) <= 8
        assert int((model.get_parameter(fqn).detach()[~m] != 0).sum()) == 0
