"""The quantisation block: STE, uniform and learned-step quantisers, CLIP-Q's clip-and-partition, bits used and
the packed file, the XOR-gate codec."""
import numpy as np
import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.quantize import (FakeQuant, binary_codes, bits_for, bits_used, clip_partition, gf2_solve, load_packed,
                               packed_size, quantize_to_bits, save_packed, uniform_quantize, xor_decode_tensor,
                               xor_encode_tensor, xor_matrix)
from prunekit.quantize.xor import decode_plane, encode_plane, xor_decode


def test_uniform_quantize_by_hand_and_lsq_step_gradient():
    x = torch.tensor([-2.0, -0.26, 0.1, 0.74, 0.9])
    step = torch.tensor(0.5, requires_grad=True)
    qmax = torch.tensor(1.0, requires_grad=True)
    y = uniform_quantize(x, step, qmax)
    assert y.tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    y.sum().backward()
    # d/d step of step*round(c/step) under the STE: round(c/step) - c/step, summed over x (c = clipped x)
    c = x.clamp(-1, 1)
    assert float(step.grad) == pytest.approx(float((torch.round(c / 0.5) - c / 0.5).sum()))
    assert float(qmax.grad) == pytest.approx(-1.0)  # only x=-2 is clipped: d(-qmax)/dqmax = -1


def test_bits_follow_step_and_range_and_are_differentiable():
    fq = FakeQuant(4, learn="step_qmax").init_from(torch.tensor([-3.5, 7.0]))
    assert float(fq.qmax.detach()) == pytest.approx(7.0) and float(fq.step.detach()) == pytest.approx(1.0)
    assert float(fq.bits.detach()) == pytest.approx(4.0) and fq.stored_bits() == 4
    fq.bits.backward()
    assert float(fq.log_step.grad) < 0 < float(fq.log_qmax.grad)  # a larger step means fewer bits
    assert float(bits_for(torch.tensor(1.0), torch.tensor(1.0))) == pytest.approx(2.0)
    with pytest.raises(ConfigError, match="learn="):
        FakeQuant(4, learn="nope")


def test_fake_quant_forward_has_at_most_two_to_the_bits_levels():
    x = torch.randn(1000)
    fq = FakeQuant(3).init_from(x)
    assert torch.unique(fq(x)).numel() <= 2 ** 3 - 1  # signed: -3..3
    assert torch.unique(quantize_to_bits(x, 3)).numel() <= 7


def test_clip_partition_by_hand():
    w = torch.tensor([0.05, -0.1, 1.0, 1.2, 3.0, -2.0])
    q, kept = clip_partition(w, 1 / 3, 2)
    # two smallest |w| clipped; range [-2, 3] in 3 bins of width 5/3: [-2,-1/3) {-2}, [-1/3,4/3) {1, 1.2}, [4/3,3] {3}
    assert kept.tolist() == [False, False, True, True, True, True]
    assert q.tolist() == pytest.approx([0.0, 0.0, 1.1, 1.1, 3.0, -2.0])
    big = torch.randn(64, 50)
    q, kept = clip_partition(big, 0.9, 5)
    assert int((q == 0).sum()) == round(0.9 * big.numel())
    assert torch.unique(q[q != 0]).numel() <= 2 ** 5 - 1


def test_bits_used_and_packed_file_round_trip(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(100, 50), nn.ReLU(), nn.Linear(50, 10))
    with torch.no_grad():
        m[0].weight.copy_(clip_partition(torch.randn(50, 100), 0.9, 3)[0])
    used = bits_used(m)
    assert used["0.weight"]["bits"] == 3 and used["0.weight"]["zeros"] == pytest.approx(0.9)
    assert used["2.weight"]["bits"] == 9  # 500 distinct values
    size = save_packed(m, tmp_path / "m.pkq")
    assert size == (tmp_path / "m.pkq").stat().st_size == packed_size(m)
    state = load_packed(tmp_path / "m.pkq")
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())
    dense = sum(4 * t.numel() for t in m.state_dict().values())
    # layer 0: 5000-bit bitmap (625 B) + 7 floats + 500 x 3 bits, instead of 20,000 B
    assert size < dense - 20000 + 625 + 28 + 188 + 600


def test_gf2_solve_matches_every_consistent_equation():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, (6, 8))
    x_true = rng.integers(0, 2, 8)
    x, bad = gf2_solve(a, a @ x_true % 2)
    assert bad == [] and np.array_equal(a @ x % 2, a @ x_true % 2)
    x, bad = gf2_solve(np.array([[1, 1], [1, 1]]), np.array([0, 1]))
    assert bad == [1] and (x.sum() % 2) == 0


def test_xor_encode_by_hand_no_patch_needed_when_care_bits_are_few():
    m = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=np.uint8)
    bits = np.array([1, 0, 0, 1], dtype=np.uint8)
    care = np.array([1, 0, 0, 0], dtype=np.uint8)  # one care bit: x = (1, *) satisfies it
    enc = encode_plane(bits, care, m)
    assert enc.patches == [] and xor_decode(enc.codes, m)[0, 0] == 1
    care = np.array([1, 1, 1, 1], dtype=np.uint8)  # row 4 of M is 0: y4 = 1 can never be produced -> a patch
    enc = encode_plane(bits, care, m)
    assert (0, 3) in enc.patches
    assert np.array_equal(decode_plane(enc, m), bits)


@pytest.mark.parametrize("search", ["exhaustive", "solve"])
def test_xor_decode_of_a_pruned_quantised_tensor_is_bit_exact(search):
    torch.manual_seed(0)
    w = torch.randn(30, 40)
    mask = w.abs() > w.abs().flatten().quantile(0.9)
    m = xor_matrix(20, 3, seed=1)
    code, q = xor_encode_tensor(w, mask, m, bits=2, search=search)
    assert torch.equal(xor_decode_tensor(code, m), q)
    assert int((q[~mask] != 0).sum()) == 0 and code.patches() > 0


def test_more_xor_inputs_need_fewer_patches():
    torch.manual_seed(0)
    w = torch.randn(100, 100)
    mask = w.abs() > w.abs().flatten().quantile(0.9)
    counts = [xor_encode_tensor(w, mask, xor_matrix(20, n, seed=0))[0].patches() for n in (2, 3, 4, 6)]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]


def test_binary_codes_reduce_the_error_with_more_bits():
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    mask = torch.ones_like(w, dtype=torch.bool)
    errs = []
    for b in (1, 2, 3):
        a, s = binary_codes(w, mask, b)
        rec = sum(a[:, i:i + 1] * (s[i].float() * 2 - 1) for i in range(b))
        errs.append(float((rec - w).norm()))
    assert errs[0] > errs[1] > errs[2]


def test_lsq_mode_learns_the_step_only_and_the_unsigned_grid_starts_at_zero():
    x = torch.tensor([0.0, 0.3, 0.7, 2.0])
    fq = FakeQuant(2, learn="step", signed=False).init_from(x)  # unsigned 2 bits: {0, 1, 2, 3} * 2/3
    assert fq.log_step.requires_grad and not fq.log_qmax.requires_grad
    y = fq(x)
    assert y.tolist() == pytest.approx([0.0, 0.0, 2 / 3, 2.0])  # 0.3 / (2/3) = 0.45 rounds to 0
    y.sum().backward()
    assert fq.log_step.grad is not None and fq.log_qmax.grad is None
    assert fq(torch.tensor([-1.0])).tolist() == [0.0]
