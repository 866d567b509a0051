import os

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import CheckpointError, ConfigError
from prunekit.masks.sparse import SparseConv2d, load_sparse, save_sparse, to_dense_, to_sparse_


def lenet5ish():
    return nn.Sequential(nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(16 * 3 * 3, 32), nn.ReLU(), nn.Linear(32, 10))


def pruned(sparsity=0.9, pattern="element"):
    torch.manual_seed(0)
    m = lenet5ish().eval()
    pk.sparsify_(m, sparsity=None if ":" in pattern and "block" not in pattern else sparsity, pattern=pattern,
                 ignore=["0", "8"] if pattern == "block:4x4" else ())
    pk.finalize_(m)
    return m


@pytest.mark.parametrize("layout,blocksize,pattern", [("csr", (1, 4), "element"), ("bsr", (4, 4), "block:4x4")])
def test_sparse_modules_match_dense_outputs(layout, blocksize, pattern):
    m = pruned(pattern=pattern)
    x = torch.randn(4, 1, 14, 14)
    ref = m(x)
    report = to_sparse_(m, layout=layout, blocksize=blocksize)
    expected = {"3", "6"} | ({"0", "8"} if layout == "csr" else set())
    assert set(report["converted"]) == expected
    assert isinstance(m[3], SparseConv2d) and m[3].weight.layout == (torch.sparse_csr if layout == "csr" else torch.sparse_bsr)
    torch.testing.assert_close(m(x), ref, atol=1e-5, rtol=1e-4)
    assert sorted(to_dense_(m)) == sorted(expected)
    torch.testing.assert_close(m(x), ref, atol=1e-5, rtol=1e-4)
    lenet5ish().load_state_dict(m.state_dict(), strict=True)


def test_csr_storage_is_smaller_at_high_sparsity_and_reported_honestly():
    m = pruned(0.95)
    dense_bytes = m[6].weight.numel() * 4
    report = to_sparse_(m)
    nnz = m[6].weight.values().numel()
    assert report["converted"]["6"] == nnz * 4 + nnz * 8 + (32 + 1) * 8  # values + int64 cols + crow
    assert report["converted"]["6"] < dense_bytes


def test_compact_file_round_trip_into_the_dense_architecture(tmp_path):
    m = pruned(0.95)
    x = torch.randn(2, 1, 14, 14)
    size = save_sparse(m, tmp_path / "s.safetensors")
    pk_dense = tmp_path / "d.safetensors"
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(pk_dense))
    assert size < 0.5 * os.path.getsize(pk_dense)
    other = load_sparse(lenet5ish().eval(), tmp_path / "s.safetensors")
    torch.testing.assert_close(other(x), m(x))
    with pytest.raises(CheckpointError, match="no sparse model file"):
        load_sparse(lenet5ish(), tmp_path / "none.safetensors")


def test_conversion_refuses_masked_models_and_bad_layouts():
    m = lenet5ish()
    pk.sparsify_(m, sparsity=0.5)
    with pytest.raises(ConfigError, match="call pk.finalize_"):
        to_sparse_(m)
    pk.finalize_(m)
    with pytest.raises(ConfigError, match="unknown sparse layout layout='csc'; did you mean 'csr'"):
        to_sparse_(m, layout="csc")
    report = to_sparse_(m, layout="semi_structured")
    assert report["converted"] == {} and "CUDA" in report["skipped"]["6"]
