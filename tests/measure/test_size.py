import json
import struct
import zlib

import pytest
import torch
import torch.nn as nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.measure import encode_sparse, size_on_disk


def _pad8(n):
    return n + (-n) % 8


def test_dense_is_the_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    lin = nn.Linear(3, 2)
    header = {"bias": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [8, 32]}}
    expected = 8 + _pad8(len(json.dumps(header, separators=(",", ":")))) + 4 * 8
    assert size_on_disk(lin) == expected == 160
    m = pk.models.create("resnet20")
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, tmp_path / "m.safetensors")
    assert size_on_disk(m, "dense") == (tmp_path / "m.safetensors").stat().st_size


def test_tied_weights_are_stored_once():
    tied = pk.models.create("gpt-tiny", vocab_size=50, context_length=8, tie_weights=True)
    untied = pk.models.create("gpt-tiny", vocab_size=50, context_length=8)
    diff = size_on_disk(untied) - size_on_disk(tied)
    assert 50 * 64 * 4 < diff <= 50 * 64 * 4 + 88  # the tensor, plus its header entry (8-byte aligned)


def _sparse_header(entries):
    head = json.dumps(entries, separators=(",", ":")).encode()
    return 8 + len(head)


def test_sparse_encodings_by_hand():
    lin = nn.Linear(16, 4)  # weight: 64 entries, bias: 4
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight.view(-1)[[3, 17, 40, 63]] = torch.tensor([1.0, 2.0, 3.0, 4.0])
        lin.bias.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    # weight: dense 256 B, bitmap 4*4 + 8 = 24 B, coo 4*4 + 4*1 = 20 B -> coo; bias: dense 16 B < bitmap 17 B
    header = {"weight": {"dtype": "F32", "shape": [4, 16], "enc": "coo", "nnz": 4},
              "bias": {"dtype": "F32", "shape": [4], "enc": "dense", "nnz": 4}}
    blob = encode_sparse(lin)
    assert size_on_disk(lin, "sparse") == len(blob) == _sparse_header(header) + 20 + 16
    body = blob[_sparse_header(header):]
    assert body[:16] == struct.pack("<4f", 1, 2, 3, 4) and list(body[16:20]) == [3, 17, 40, 63]
    assert json.loads(blob[8:_sparse_header(header)]) == header
    # half the weights non-zero: bitmap (32*4 + 8 = 136 B) beats coo (32*4 + 32 = 160 B) and dense (256 B)
    with torch.no_grad():
        lin.weight.view(-1)[:32] = 1.0
        lin.weight.view(-1)[32:] = 0.0
    header["weight"].update(enc="bitmap", nnz=32)
    assert size_on_disk(lin, "sparse") == _sparse_header(header) + 136 + 16
    assert encode_sparse(lin)[-16 - 8:-16] == bytes([255] * 4 + [0] * 4)


def test_coo_index_width_grows_with_tensor_size():
    lin = nn.Linear(300, 1, bias=False)  # 300 entries: positions need 2 bytes
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[0, 299] = 5.0
    header = {"weight": {"dtype": "F32", "shape": [1, 300], "enc": "coo", "nnz": 1}}
    assert size_on_disk(lin, "sparse") == _sparse_header(header) + 4 + 2


def test_integer_buffers_stay_dense_and_compressed_is_zlib_of_sparse():
    m = pk.models.create("vgg-small")
    blob = encode_sparse(m)
    assert json.loads(blob[8:8 + struct.unpack("<Q", blob[:8])[0]])["features.1.num_batches_tracked"]["enc"] == "dense"
    assert size_on_disk(m, "compressed") == len(zlib.compress(blob, 6))
    dense = size_on_disk(m, "dense")
    # a dense random model gains (almost) nothing from the sparse encoding; zeroing 90% of it does
    assert abs(size_on_disk(m, "sparse") - dense) < 0.01 * dense
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1:
                p.view(-1)[: int(p.numel() * 0.9)] = 0
    assert size_on_disk(m, "sparse") < 0.25 * dense
    assert size_on_disk(m, "compressed") < size_on_disk(m, "sparse")
    assert size_on_disk(m, "compressed", codec="lzma") < size_on_disk(m, "sparse")


def test_bad_kind_or_codec():
    with pytest.raises(ConfigError, match=r"unknown size kind kind='sprase'; did you mean 'sparse'"):
        size_on_disk(nn.Linear(2, 2), "sprase")
    with pytest.raises(ConfigError, match=r"unknown codec codec='gzip'"):
        size_on_disk(nn.Linear(2, 2), "compressed", codec="gzip")
