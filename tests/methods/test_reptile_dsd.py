"""reptile-dsd: Reptile with dense-sparse-dense / IHT phases (Tian et al., ECCV 2020)."""
import math

import pytest
import torch
from torch import nn

import prunekit as pk

from prunekit.data.episodes import Episode
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.masks import get_masks
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.reptile_dsd import SparsePhases, _schedule, dsd_rate, iht_rate, iht_rates, ReptileDSDConfig
from prunekit.train.reptile import Reptile

load_all()
SPEC = get_method("reptile-dsd")
FAST = {"train_shots": 3, "inner_steps": 2, "inner_batch": 5, "meta_batch": 2, "eval_episodes": 0}


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 5))


def _data(per_class=6, classes=8):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(classes).repeat(per_class)
    x = torch.randn(len(y), 1, 8, 8, generator=g) + y.view(-1, 1, 1, 1).float() / classes
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, len(y), 16)]


def _run(target="sparsity=0.5", model=None, **options):
    model = model if model is not None else _net()
    ctx = RunContext(model=model, example_inputs=torch.zeros(2, 1, 8, 8), target=target, train_data=_data(),
                     options={**FAST, "held_out": 3, **options})
    return model, SPEC.run(ctx)


# ------------------------------------------------------------------------------------------- schedules (entry)
def test_iht_rate_schedule_is_linspace_from_init_rate_to_compress_rate():
    rates = iht_rates(0.1, 0.3, 4)
    assert rates == torch.linspace(0.1, 0.3, 4, dtype=torch.float64).tolist()
    # the reference: init_rate + k (compress_rate - init_rate) / (n_intervals - 1), n = (iters - sparse_iter) / interval
    ref = [0.1 + k * (0.3 - 0.1) / ((100000 - 20000) / 20000 - 1) for k in range(4)]
    assert all(math.isclose(a, b) for a, b in zip(rates, ref))
    cfg = ReptileDSDConfig(variant="iht", sparse_iter=20000)
    rate_at, new_mask_at, got = _schedule(cfg, 0.3)
    assert all(math.isclose(a, b) for a, b in zip(got, ref))
    at = [rate_at(i) for i in (19999, 20000, 34999, 35000, 40000, 99999)]
    assert at == [None, got[0], got[0], None, got[1], None]
    assert [new_mask_at(i) for i in (20000, 20001, 40000, 80000)] == [True, False, True, True]


def test_dsd_schedule_is_dense_then_masked_at_the_final_rate_then_dense():
    assert [dsd_rate(i, 30000, 90000, 0.3) for i in (0, 29999, 30000, 89999, 90000)] == [None, None, 0.3, 0.3, None]
    # IHT, first mask at 2, intervals of 4, the first 3 of each masked; the last rate holds past the last interval
    got = [iht_rate(i, 2, 4, 0.75, [0.1, 0.2]) for i in (1, 2, 4, 5, 6, 9, 10)]
    assert got == [None, 0.1, 0.1, None, 0.2, None, 0.2]
    assert ReptileDSDConfig().retrain_iter == 90000 and _schedule(ReptileDSDConfig(), 0.3)[1](30000)


# ------------------------------------------------------------------------------------------- defining step
class _Alternate:
    def __init__(self, tasks):
        self.tasks, self.i = tasks, 0

    def episode(self, shots, queries=0):
        self.i += 1
        return self.tasks[(self.i - 1) % len(self.tasks)]


def _task(x, y):
    x, y = torch.tensor([[x]]), torch.tensor([y])
    return Episode(x, y, x[:0], y[:0], (y.item(),))


def test_sparse_phase_outer_update_is_reptile_restricted_to_the_magnitude_mask_by_hand():
    # W = (0.3, -0.1) (2 logits, 1 input), rate 0.5: the mask keeps 0.3 and zeroes -0.1 (smaller |w|).
    # Task 1 (x = 1, label 0), logits (0.3, 0): dL/dw0 = sigmoid(0.3) - 1 -> phi1_0 = 0.3 + 0.1 (1 - sigmoid(0.3)).
    # Task 2 (x = 2, label 1), logits (0.6, 0): dL/dw0 = 2 sigmoid(0.6) -> phi2_0 = 0.3 - 0.2 sigmoid(0.6).
    # theta' = theta + 0.5 (mean phi - theta); w1 stays exactly 0 (masked) although its gradient is not 0.
    net = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[0.3], [-0.1]]))
    phases = SparsePhases(net, ["weight"], lambda it: 0.5, lambda it: it == 0)
    r = Reptile(net, ways=2, inner_steps=1, inner_batch=1, inner_lr=0.1, optimizer="sgd", callbacks=[phases])
    r.train(_Alternate([_task(1.0, 0), _task(2.0, 1)]), iterations=1, meta_batch=2, shots=1, meta_step=0.5,
            meta_step_final=0.5)
    s3, s6 = torch.sigmoid(torch.tensor(0.3)), torch.sigmoid(torch.tensor(0.6))
    mean = ((0.3 + 0.1 * (1 - s3)) + (0.3 - 0.2 * s6)) / 2
    torch.testing.assert_close(net.weight.detach().flatten(), torch.stack([0.3 + 0.5 * (mean - 0.3), torch.tensor(0.)]))
    assert phases.masked_epochs == 1 and phases.max_masked_abs == 0.0


# ------------------------------------------------------------------------------------------- the method
def test_dsd_masked_phase_keeps_the_exact_rate_with_zeros_and_the_dense_phase_regrows():
    model, res = _run(iterations=6, sparse_iter=2, retrain_iter=5)
    t = res.telemetry
    assert t["sparse_iterations"] == 3 and t["masks_computed"] == 1 and t["max_masked_abs"] == 0.0
    assert abs(t["realised_sparsity"] - 0.5) <= 0.005
    assert all(abs(z - 0.5) <= 0.005 for _, _, z in res.info["phases"])
    assert res.engaged is True and not res.info["ends_sparse"] and not get_masks(model)
    # the first conv is never pruned; after the lift the pruned weights train again from 0
    assert int((model[0].weight == 0).sum()) == 0
    assert float((model[4].weight == 0).float().mean()) < 0.05


def test_dsd_ending_in_the_sparse_phase_returns_a_masked_model_at_the_target():
    model, res = _run(iterations=3, sparse_iter=1, retrain_iter=3)
    assert res.info["ends_sparse"] and set(get_masks(model)) == {"4.weight", "9.weight"}
    for m in (model[4], model[9]):
        assert float((m.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.005)


def test_deterministic_under_a_seed_and_the_masked_result_finalizes_to_the_dense_keys(tmp_path):
    # the checks of tests/masks/test_method_contract.py, which cannot run reptile-dsd on its 3-class MLP
    a, _ = _run(iterations=3, sparse_iter=1, retrain_iter=3)
    b, _ = _run(iterations=3, sparse_iter=1, retrain_iter=3)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    masks = get_masks(a)
    assert all(torch.equal(m, get_masks(b)[k]) for k, m in masks.items())
    opt = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    for x, y in _data()[:2]:  # masks hold in a plain loop
        opt.zero_grad(); nn.functional.cross_entropy(a(x), y % 5).backward(); opt.step()
    assert all(int((a.get_parameter(k).detach()[~m] != 0).sum()) == 0 for k, m in masks.items())
    keys = list(a.state_dict())
    pk.finalize_(a)
    assert list(a.state_dict()) == keys and not get_masks(a)
    _net().load_state_dict(a.state_dict(), strict=True)


def test_iht_thresholds_again_each_interval_at_rising_rates():
    model, res = _run(target="sparsity=0.4", variant="iht", iterations=8, sparse_iter=2, sparse_interval=2, ratio=0.5,
                      init_rate=0.1)
    assert res.info["rates"] == pytest.approx([0.1, 0.25, 0.4])  # (8 - 2) / 2 = 3 intervals
    assert res.telemetry["masks_computed"] == 3  # intervals start at 2, 4, 6: the mask is recomputed at each
    realised = [z for _, _, z in res.info["phases"]]
    assert realised == sorted(realised) and realised[0] == pytest.approx(0.1, abs=0.01)
    assert res.telemetry["sparse_iterations"] == 3 and not res.info["ends_sparse"]  # ratio 0.5: 1 of 2 masked


def test_reports_few_shot_accuracy_and_the_gap_on_held_out_classes():
    _, res = _run(iterations=2, sparse_iter=1, eval_episodes=2, eval_steps=2)
    assert set(res.info["classes"]["held_out"]) | set(res.info["classes"]["meta_train"]) == set(range(8))
    assert len(res.info["classes"]["held_out"]) == 3
    assert 0 <= res.info["meta_test_accuracy"] <= 1
    assert res.info["gap"] == pytest.approx(res.info["meta_train_accuracy"] - res.info["meta_test_accuracy"])


def test_engaged_at_the_defaults_on_a_tiny_setting():
    _, res = _run(iterations=3, sparse_iter=1, retrain_iter=2)
    assert res.engaged is True and res.telemetry["sparse_iterations"] == 1


def test_no_masked_iteration_warns_with_the_knob():
    with pytest.warns(MechanismWarning, match="raise options.iterations above options.sparse_iter"):
        _, res = _run(iterations=2, sparse_iter=2)
    assert res.engaged is False and res.telemetry["sparse_iterations"] == 0


def test_bad_input_is_refused_with_the_argument_and_the_model_is_unchanged():
    model = _net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="ways=6: only 5 classes"):
        _run(model=model, iterations=2, ways=6)
    with pytest.raises(ConfigError, match="held_out=8"):
        _run(model=model, iterations=2, held_out=8)
    with pytest.raises(ConfigError, match="ratio"):
        _run(model=model, ratio=1.5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and not get_masks(model)
