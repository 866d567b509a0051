import copy
import os

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.masks.dct import band_index, dct2, dct_matrix, idct2, project
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.fddp import DCTProjection, FDDPConfig, FrequencyMasks, band_rates, band_thresholds

load_all()


def test_dct_round_trip_is_exact_and_orthonormal():
    """Issue 21: FDDP's DCT round trip exact (entry (a): kernels back to 1e-6)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 3, 5, 5, generator=g)
    assert (idct2(dct2(w)) - w).abs().max() < 1e-6
    assert torch.allclose(dct2(w).norm(), w.norm(), rtol=1e-6)  # Parseval: orthonormal
    d = dct_matrix(3)
    assert torch.allclose(d @ d.T, torch.eye(3, dtype=d.dtype), atol=1e-12)
    assert band_index(3).tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4]]


def test_a_constant_kernel_is_one_dc_coefficient_so_pruning_the_rest_keeps_it_exactly():
    """The defining step by hand: the 2x2 kernel of ones has DCT [[2, 0], [0, 0]]; keeping 1 of 4 coefficients
    (75% pruned in the DCT domain) reproduces it exactly, keeping 1 of 4 taps (75% spatial) loses 3 of 4 taps."""
    w = torch.ones(1, 1, 2, 2)
    assert torch.allclose(dct2(w), torch.tensor([[[[2.0, 0.0], [0.0, 0.0]]]]), atol=1e-6)
    mask = torch.tensor([[[[True, False], [False, False]]]])
    assert (project(w, mask) - w).abs().max() < 1e-6
    spatial = w * mask
    assert (spatial - w).norm() ** 2 == pytest.approx(3.0)


def test_band_adaptive_rates_grow_with_frequency_and_average_to_the_target():
    assert band_rates(torch.tensor([1.0, 2.0, 1.0]), 0.5).tolist() == pytest.approx([0.25, 0.5, 0.75])
    counts = torch.tensor([1.0, 2, 3, 4, 5, 4, 3, 2, 1])  # the bands of a 5x5 kernel
    r = band_rates(counts, 0.85)
    assert float((r * counts).sum() / counts.sum()) == pytest.approx(0.85, abs=1e-6)
    assert bool((r[1:] >= r[:-1]).all()) and r[0] < 0.85 < r[-1]
    assert band_rates(counts, 0.85, "none").tolist() == pytest.approx([0.85] * 9)
    g = torch.Generator().manual_seed(0)
    c = torch.randn(20, 4, 5, 5, generator=g)
    t = band_thresholds(c, 0.85, FDDPConfig())
    cut = (c.abs() <= 0.9 * t)  # the first cut removes each band's rate
    for b in range(9):
        assert cut[..., band_index(5) == b].float().mean().item() == pytest.approx(float(r[b]), abs=0.02)


def test_masks_splice_a_coefficient_back_with_hysteresis_and_feed_the_step_to_the_full_kernel():
    """A 2x2 kernel, one threshold t = 1 everywhere: coefficients [[2, 0.5], [0.85, 1.05]] -> the first cut keeps
    2 and 1.05 (above 0.9); a step that raises the pruned 0.85 to 1.2 (> 1.1) brings it back."""
    w = nn.Parameter(idct2(torch.tensor([[[[2.0, 0.5], [0.85, 1.05]]]])))
    cb = FrequencyMasks({"w": w}, {"w": torch.ones(2, 2)}, FDDPConfig())
    assert cb.masks["w"].tolist() == [[[[True, False], [False, True]]]] and cb.prunes == 2
    assert torch.allclose(dct2(w.detach()), torch.tensor([[[[2.0, 0.0], [0.0, 1.05]]]]), atol=1e-6)
    with torch.no_grad():  # an optimizer step at the masked kernel: +0.35 on coefficient (1, 0)
        w += idct2(torch.tensor([[[[0.0, 0.0], [0.35, 0.0]]]]))
    cb.on_after_step(type("S", (), {"step": 1})())
    assert torch.allclose(dct2(cb.full["w"]), torch.tensor([[[[2.0, 0.5], [1.2, 1.05]]]]), atol=1e-6)
    assert cb.masks["w"].tolist() == [[[[True, False], [True, True]]]] and cb.splices == 1


def _tiny(seed=0):
    torch.manual_seed(seed)
    m = pk.models.create("lenet5")
    g = torch.Generator().manual_seed(seed)
    data = [(torch.randn(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g)) for _ in range(8)]
    return m, data


def _run(model, data, target="sparsity=0.85", epochs=2, **options):
    return get_method("fddp").run(RunContext(model=model, example_inputs=data[0][0][:1], target=target,
                                             train_data=data, prune_epochs=epochs, options=options))


def test_zero_pruning_in_the_dct_parameterisation_gives_the_same_logits():
    m, data = _tiny()
    ref = m(data[0][0])
    params = {f: m.get_parameter(f) for f in ("conv1.weight", "conv2.weight")}
    FrequencyMasks(params, {f: torch.full(p.shape[-2:], -1.0) for f, p in params.items()}, FDDPConfig())
    assert (m(data[0][0]) - ref).abs().max() < 1e-5


def test_engaged_at_defaults_on_a_tiny_lenet5_and_the_coefficients_meet_the_target():
    m, data = _tiny()
    res = _run(m, data)
    t = res.telemetry
    assert res.engaged is True and t["splices"] >= 1 and t["mask_updates"] == 17
    assert t["coef_sparsity"] == pytest.approx(0.85, abs=0.03)
    assert t["band_sparsity"][0] < 0.85 < t["band_sparsity"][-1]  # low bands pruned less than high ones
    zero = sum(int((dct2(m.get_parameter(f).detach()).abs() < 1e-6).sum()) for f in ("conv1.weight", "conv2.weight"))
    assert zero / (150 + 2400) >= t["coef_sparsity"] - 1e-3
    assert (m.fc1.weight != 0).all()  # Linear layers are not touched


def test_exact_meets_the_target_per_layer():
    m, data = _tiny()
    res = _run(m, data, exact=True)
    assert res.telemetry["coef_sparsity"] == pytest.approx(0.85, abs=1e-3)


def test_no_splicing_warns_naming_the_knob():
    m, data = _tiny()
    with pytest.warns(MechanismWarning, match="lower options.high"):
        res = _run(m, data, epochs=1, high=1e6)
    assert res.engaged is False and res.telemetry["splices"] == 0


def test_projection_callback_keeps_the_coefficients_pruned_during_a_fine_tune():
    m, data = _tiny()
    res = _run(m, data)
    cb = res.callbacks[0]
    assert isinstance(cb, DCTProjection)
    pk.fit(m, data[:2], pk.TrainConfig(epochs=1, lr=0.05, progress=False), callbacks=res.callbacks)
    for f, mask in cb.masks.items():
        assert dct2(m.get_parameter(f).detach())[~mask].abs().max() < 1e-5


def test_bad_input_is_refused_and_the_model_left_unchanged():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    data = [(torch.randn(8, 1, 28, 28), torch.zeros(8, dtype=torch.long))]
    before = copy.deepcopy(mlp.state_dict())
    with pytest.raises(ConfigError, match="k x k conv kernels"):
        _run(mlp, data)
    m, data = _tiny()
    before_m = copy.deepcopy(m.state_dict())
    with pytest.raises(ConfigError, match="bands"):
        _run(m, data, bands="octave")
    with pytest.raises(ConfigError, match="needs train"):
        get_method("fddp").run(RunContext(model=m, example_inputs=data[0][0][:1], target="sparsity=0.5"))
    assert all(torch.equal(v, before[k]) for k, v in mlp.state_dict().items())
    assert all(torch.equal(v, before_m[k]) for k, v in m.state_dict().items())


FASHION = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


@pytest.mark.slow
@pytest.mark.heavy  # several minutes: `make test-heavy`, not the default run
@pytest.mark.skipif(not os.path.exists(FASHION), reason="Fashion-MNIST not installed (make data)")
def test_fashion_lenet5_85_percent_coefficients_within_1pp_of_dense_above_spatial_dns_and_splicing():
    """The entry's check (b)-(d), one seed (the 3-seed run is benchmarks/fddp_check.py): LeNet-5 trained 3
    epochs on 10,000 Fashion-MNIST images, then 3 more epochs dense / with fddp at 85% of the conv DCT
    coefficients / with spatial DNS on the same schedule. Calibration run, seed 0 (nice python
    benchmarks/fddp_check.py, benchmarks/results/fddp_check.jsonl): dense 0.860, fddp 0.8575 (coefficients
    84.0% zero, 1,380 splices), spatial DNS 0.839 (82.0% of taps zero)."""
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
    from benchmarks.fddp_check import row

    torch.set_num_threads(1)
    bundle = pk.data.load("fashion-mnist", subset=(10000, 2000), batch_size=128, val_fraction=0.0, augment=False)
    torch.manual_seed(0)
    dense = pk.models.create("lenet5")
    pk.fit(dense, bundle.train, pk.TrainConfig(epochs=3, lr=0.05, seed=0, progress=False))
    r = {name: row(name, dense.state_dict(), bundle, 0.85, 3, 0) for name in ("dense", "fddp", "dns-spatial")}
    assert r["fddp"]["accuracy"] >= r["dense"]["accuracy"] - 0.01  # (b) within 1 pp of dense
    assert r["fddp"]["conv_zero_coefs"] >= 0.83  # at about the target (the hysteresis lets it drift)
    # (c) at no more non-zeros than spatial DNS, at least its accuracy - 0.3 pp
    assert r["fddp"]["conv_zero_coefs"] >= r["dns-spatial"]["conv_zero_taps"]
    assert r["fddp"]["accuracy"] >= r["dns-spatial"]["accuracy"] - 0.003
    assert r["fddp"]["splices"] >= 1  # (d) coefficients re-activated during training
