"""``take_`` (the gather behind every surgery) keeps exactly the right positions, in every dtype, with and
without the reused buffer for multi-dim gathers."""
import numpy as np
import pytest
import torch

from prunekit.surgery import Scratch, take_


def reference(t: torch.Tensor, dims: dict) -> torch.Tensor:
    out = t
    for d, remove in dims.items():
        keep = [i for i in range(t.shape[d]) if i not in set(remove)]
        out = out.index_select(d, torch.tensor(keep, dtype=torch.long))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64,
                                   torch.bool])
@pytest.mark.parametrize("shape,dims", [((6, 5, 3, 3), (0, 1)), ((6, 5), (0, 1)), ((6, 5), (1,)), ((7,), (0,)),
                                        ((4, 6, 5), (1, 2)), ((4, 6, 5), (0, 1, 2))])
def test_take_removes_exactly_the_listed_positions(dtype, shape, dims):
    rng = np.random.default_rng(0)
    t = (torch.randn(shape) * 10).to(dtype)
    cut = {d: sorted(rng.choice(shape[d], shape[d] // 2, replace=False).tolist()) for d in dims}
    want = reference(t, cut)
    scratch = Scratch(Scratch.size_for({"w": t}, {"w": cut}))
    for got in (take_(t, cut), take_(t, cut, scratch)):
        assert got.dtype == t.dtype and got.is_contiguous()
        assert torch.equal(got, want)
    before = t.clone()
    take_(t, cut, scratch)
    assert torch.equal(t, before)


def test_scratch_is_reused_and_results_never_alias_it():
    a, b = torch.randn(8, 6, 3, 3), torch.randn(8, 6, 3, 3)
    cuts = {"a": {0: [1, 2], 1: [0]}, "b": {0: [0, 7], 1: [5]}}
    scratch = Scratch(Scratch.size_for({"a": a, "b": b}, cuts))
    assert scratch.nbytes == 6 * 6 * 9 * 4  # the first step keeps 6 of 8 rows of 6x3x3 float32
    ra = take_(a, cuts["a"], scratch)
    ptr = scratch.buf.data_ptr()
    rb = take_(b, cuts["b"], scratch)
    assert scratch.buf.data_ptr() == ptr  # one buffer for both
    base = scratch.buf.untyped_storage().data_ptr()
    for r in (ra, rb):
        assert r.untyped_storage().data_ptr() != base
    assert torch.equal(ra, reference(a, cuts["a"])) and torch.equal(rb, reference(b, cuts["b"]))
