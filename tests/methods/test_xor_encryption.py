"""XOR-gate weight encryption: exact decode of a pruned, binary-code-quantised model, bits per weight,
patches falling with n_in, telemetry; the entry's check on the shipped LeNet-300-100 (slow)."""
import copy
import os

import pytest
import torch

from method_setups import tiny_mlp_task
from prunekit.data.sources import FASHION_DIR
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods import RunContext, get_method, load_all
from prunekit.quantize.xor import _reconstruct, binary_codes

load_all()


def _run(model, target="sparsity=0.9", **options):
    return get_method("xor-encryption").run(RunContext(model=model, example_inputs=None, target=target,
                                                       options=options))


def _pruned_quantised(model, sparsity, bits):
    """The reference: per-layer magnitude mask, greedy binary codes, computed here without the codec."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.Linear):
                w = m.weight
                k = round(sparsity * w.numel())
                mask = torch.ones(w.numel(), dtype=torch.bool)
                mask[w.abs().flatten().argsort(stable=True)[:k]] = False
                mask = mask.view_as(w)
                a, s = binary_codes(w, mask, bits)
                w.copy_(_reconstruct(a, s, mask))
    return ref


@pytest.mark.parametrize("bits", [1, 2])
def test_decoded_model_computes_exactly_what_the_pruned_quantised_model_does(bits):
    model, data = tiny_mlp_task(30, 40, 5, 1)
    ref = _pruned_quantised(model, 0.9, bits)
    res = _run(model, bits=bits)
    assert res.engaged is True and res.telemetry["patches"] > 0  # patches were needed and applied
    for (n, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), n
    assert torch.equal(model(data[0][0]), ref(data[0][0]))
    assert res.info["sparsity"] == pytest.approx(0.9, abs=1e-3)


def test_default_n_in_follows_the_kept_fraction_and_more_inputs_need_fewer_patches():
    model, _ = tiny_mlp_task(60, 80, 5, 1)
    res = _run(copy.deepcopy(model))
    assert res.info["n_in"] == 2  # ceil(20 * 0.1)
    patches = [_run(copy.deepcopy(model), n_in=n).telemetry["patches"] for n in (2, 4, 8)]
    assert patches[0] > patches[1] > patches[2]


def test_dense_weights_gain_nothing_and_the_run_warns():
    model, _ = tiny_mlp_task(30, 40, 5, 1)
    with pytest.warns(MechanismWarning, match="lower options.n_in"):
        res = _run(model, target="sparsity=0.0", n_out=17, n_in=16)
    assert res.engaged is False and res.telemetry["bits_per_weight"] >= 1


def test_bad_option_leaves_the_model_unchanged():
    model, _ = tiny_mlp_task(30, 40, 5, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="n_in"):
        _run(model, n_in=17)
    with pytest.raises(ConfigError, match="search"):
        _run(model, search="viterbi")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(os.path.join(FASHION_DIR, "t10k-images-idx3-ubyte.gz")),
                    reason="Fashion-MNIST not downloaded")
def test_small_scale_lenet300_xor_encryption(record_property):
    """Entry's check on the shipped LeNet-300-100 baseline, 90% magnitude pruning, 1 bit, N_out = 20.
    Measured (this test, 2026-12-07): bits/weight 0.340 / 0.342 / 0.322 and patches 6153 / 4405 / 2094 for
    N_in = 2 / 3 / 4."""
    import prunekit as pk
    from prunekit.train.baseline import load_baseline

    test = list(pk.data.load("fashion-mnist", subset=(2000, 2000), batch_size=500, val_fraction=0.0).test)
    base = load_baseline("lenet300-fashion-mnist")
    ref = _pruned_quantised(base, 0.9, 1)
    patches = []
    for n_in in (2, 3, 4):
        model = copy.deepcopy(base)
        res = _run(model, n_in=n_in)
        for x, _ in test[:2]:
            assert torch.equal(model(x), ref(x))  # (a) decode + patches reproduce every care bit
        assert res.telemetry["bits_per_weight"] <= 0.35  # (b)
        patches.append(res.telemetry["patches"])
        record_property(f"n_in{n_in}", {k: res.info[k] for k in ("bits_per_weight", "patches", "ratio_vs_float32")})
    assert patches[0] > patches[1] > patches[2]  # (c)
