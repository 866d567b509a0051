import os
from functools import partial

import pytest
import torch
from method_setups import tiny_mlp_task
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.masks import get_masks, mask_modes
from prunekit.methods import RunContext, get_method
from prunekit.methods.dpf import DPF, dpf_masks
from prunekit.schedules import GradualPruning, agp_cubic

FASHION = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
needs_fashion = pytest.mark.skipif(not os.path.exists(FASHION), reason="Fashion-MNIST not installed (make data)")


def test_gradient_at_the_pruned_model_updates_the_pruned_dense_weight():
    lin = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[2.0, 0.5]]))
    cb = DPF(lambda step: 0.5, frequency=1000)
    state = pk.train.TrainState(model=lin)
    cb.on_train_start(state)  # prunes 0.5
    opt = torch.optim.SGD(lin.parameters(), lr=1.0)
    x = torch.tensor([[1.0, 3.0]])
    out = lin(x)
    assert out.item() == 2.0  # forward at the pruned model: 2*1 + 0*3
    out.sum().backward()
    opt.step()
    # dL/dw at w~ is x = [1, 3]; it is applied to the dense w: [2-1, 0.5-3]; forward still masked
    assert lin(x).item() == pytest.approx(1.0)
    cb.refresh(lin, 1)  # |-2.5| > |1.0|: the pruned weight comes back with its own dense value
    torch.testing.assert_close(lin.weight.detach(), torch.tensor([[0.0, -2.5]]))
    assert cb.revived == 1 and cb.pruned == 1


def test_masks_are_global_magnitude_and_end_hard_at_the_exact_sparsity():
    w = {"a": torch.tensor([[0.1, 5.0], [0.2, 0.3]]), "b": torch.tensor([[4.0, 0.05]])}
    m = dpf_masks(w, 0.5)
    assert m["a"].tolist() == [[False, True], [False, True]] and m["b"].tolist() == [[True, False]]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 4))
    data = [(torch.randn(16, 10), torch.randint(0, 4, (16,))) for _ in range(4)]
    cb = DPF(partial(agp_cubic, final=0.8, start=0, n=4, frequency=2), frequency=2)
    pk.fit(model, data, pk.TrainConfig(epochs=3, lr=0.1, progress=False), callbacks=[cb])
    masks = get_masks(model)
    assert set(mask_modes(model).values()) == {"hard"}
    assert sum(int((~v).sum()) for v in masks.values()) == round(0.8 * 280)
    assert int((model[0].weight == 0).sum() + (model[2].weight == 0).sum()) == round(0.8 * 280)


def test_bad_frequency_and_target_are_config_errors():
    with pytest.raises(ConfigError, match="frequency=0"):
        DPF(lambda s: 0.5, frequency=0)
    m = nn.Linear(3, 2)
    with pytest.raises(ConfigError, match="needs train data but train_data=None"):
        get_method("dpf").run(RunContext(model=m, example_inputs=None, target="sparsity=0.5"))
    with pytest.raises(ConfigError, match="ramp_fraction"):
        get_method("dpf").run(RunContext(model=m, example_inputs=None, target="sparsity=0.5", train_data=[1],
                                         options={"ramp_fraction": 0}))
    data = [(torch.randn(4, 3), torch.randint(0, 2, (4,)))] * 2
    with pytest.raises(ConfigError, match="frequency=16.*needs 16 steps but training has 2"):
        get_method("dpf").run(RunContext(model=m, example_inputs=None, target="sparsity=0.5", train_data=data))


def _tiny():
    return tiny_mlp_task(10, 32, 4, 8)


def test_telemetry_at_the_defaults_shows_weights_coming_back():
    model, data = _tiny()
    res = get_method("dpf").run(RunContext(model=model, example_inputs=None, target="sparsity=0.8", train_data=data,
                                           prune_epochs=6, train_config=pk.TrainConfig(lr=0.1, progress=False)))
    t = res.telemetry
    assert res.engaged is True and not res.warnings
    assert t["refreshes"] == 1 + 48 // 16 and t["revived"] > 0 and t["flips"] >= t["revived"]
    assert res.info["sparsity"] == pytest.approx(round(0.8 * 448) / 448)


def test_a_single_refresh_at_the_end_is_one_shot_pruning_and_warns():
    model, data = _tiny()
    with pytest.warns(MechanismWarning, match="lower options.frequency"):
        res = get_method("dpf").run(RunContext(model=model, example_inputs=None, target="sparsity=0.8",
                                               train_data=data, options={"frequency": 8, "ramp_fraction": 1.0},
                                               train_config=pk.TrainConfig(lr=0.1, progress=False)))
    # refreshes at step 0 (sparsity 0: nothing pruned, nothing can come back) and step 8 (the full target)
    assert res.engaged is False and res.telemetry["refreshes"] == 2 and res.telemetry["revived"] == 0
    assert res.info["sparsity"] == pytest.approx(round(0.8 * 448) / 448)


@pytest.mark.slow
@needs_fashion
def test_small_scale_dpf_trails_gradual_pruning_at_five_epochs_but_revives_weights_and_beats_one_shot():
    """Entry check, scaled: LeNet-300-100 on 6k Fashion-MNIST images, 5 epochs, 95% global sparsity with
    a cubic ramp over the first 3 epochs, refresh every 16 steps; baseline: the same AGP ramp with hard
    masks (no feedback). Mean test accuracy over 3 seeds. The entry's claim (DPF >= GMP + 0.5 pt) does not
    hold at this budget: DPF trails GMP (figures and command: the DPF row of docs/methods-weight-2.md, from
    `python benchmarks/weight2_checks.py --only dpf`). The test asserts what is true: feedback revives weights
    after the ramp, DPF ends >= 1 pt below GMP, and >= 2 pt above the dense net cut to 95% without
    retraining. It fails, and the doc must be revised, the day DPF catches up with GMP here."""
    torch.set_num_threads(1)
    b = pk.data.load("fashion-mnist", batch_size=128, subset=(6000, 2000), val_fraction=0.0, augment=False)
    n = (3 * len(b.train)) // 16
    acc = {"dpf": [], "gmp": []}
    late_revived = []
    for seed in range(3):
        cfg = pk.TrainConfig(epochs=5, lr=0.05, seed=seed, progress=False)
        torch.manual_seed(seed)
        m = pk.models.create("lenet300")
        res = get_method("dpf").run(RunContext(model=m, example_inputs=None, target="sparsity=0.95",
                                               train_data=b.train, train_config=cfg, prune_epochs=5, seed=seed))
        assert abs(res.info["sparsity"] - 0.95) <= 0.001 and res.engaged is True
        acc["dpf"].append(pk.evaluate(m, b.test)["accuracy"])
        torch.manual_seed(seed)
        g = pk.models.create("lenet300")
        sched = partial(agp_cubic, final=0.95, start=0, n=n, frequency=16)
        pk.fit(g, b.train, cfg, callbacks=[GradualPruning(sched, global_=True)])
        acc["gmp"].append(pk.evaluate(g, b.test)["accuracy"])
        late_revived.append(res.telemetry["revived_after_ramp"])  # feedback re-activates weights after the ramp
    dpf, gmp = sum(acc["dpf"]) / 3, sum(acc["gmp"]) / 3
    assert min(late_revived) > 0, late_revived
    assert dpf <= gmp - 0.01, acc
    torch.manual_seed(0)
    d = pk.models.create("lenet300")
    pk.fit(d, b.train, pk.TrainConfig(epochs=5, lr=0.05, seed=0, progress=False))
    pk.sparsify_(d, sparsity=0.95, global_=True)
    assert dpf >= pk.evaluate(d, b.test)["accuracy"] + 0.02, acc
