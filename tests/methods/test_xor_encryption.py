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


def _learnable(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(10 * 32, 20, generator=g)
    y = x[:, :4].argmax(1)
    data = [(x[i:i + 32], y[i:i + 32]) for i in range(0, len(x), 32)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        for x_, y_ in data:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x_), y_).backward()
            opt.step()
    return model, data


def _loss(model, data):
    with torch.no_grad():
        return sum(float(torch.nn.functional.cross_entropy(model(x), y)) for x, y in data) / len(data)


def test_retraining_through_the_binary_codes_lowers_the_loss_and_stays_exactly_decodable():
    from prunekit.quantize import xor_decode_tensor, xor_matrix
    from prunekit.train import TrainConfig

    model, data = _learnable()
    plain = copy.deepcopy(model)
    _run(plain, target="sparsity=0.8")
    ctx = RunContext(model=model, example_inputs=None, target="sparsity=0.8", train_data=data, prune_epochs=1,
                     options={"retrain_epochs": 2}, train_config=TrainConfig(lr=0.05, progress=False))
    res = get_method("xor-encryption").run(ctx)
    assert _loss(model, data) < 0.9 * _loss(plain, data)
    m = xor_matrix(20, res.info["n_in"], seed=0)
    # the returned callback's codes are set after a fine-tune; here re-encode the final weights and decode them
    from prunekit.methods.xor_encryption import encrypt_
    from prunekit.masks import get_masks
    before = {k: v.clone() for k, v in model.state_dict().items()}
    codes, _ = encrypt_(model, get_masks(model), get_method("xor-encryption").resolve({}), res.info["n_in"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # already the decoding of a code
    assert torch.equal(xor_decode_tensor(codes["0.weight"], m), model[0].weight.detach())


def test_retraining_without_training_data_is_refused():
    model, _ = tiny_mlp_task(30, 40, 5, 1)
    with pytest.raises(ConfigError, match="retrain_epochs=1: retraining needs training batches"):
        _run(model, retrain_epochs=1)
