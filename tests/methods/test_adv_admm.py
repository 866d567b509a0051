"""adv-admm (Ye et al., ICCV 2019): ADMM weight pruning whose W-steps train on PGD examples, hard prune, adversarial
retraining. The ADMM updates are checked by hand in tests/train/test_constrained.py and the attacks in
tests/train/test_adversarial.py; here: the schedule, that the W-steps really see PGD batches, the telemetry, the
retraining callback, bad input. The entry's small-scale check is benchmarks/adv_checks.py."""
import copy

import pytest
import torch

from prunekit.errors import ConfigError, MechanismWarning
from prunekit.masks import get_masks
from prunekit.methods import RunContext, get_method, load_all
from prunekit.train import TrainConfig, fit
from prunekit.train.adversarial import AdversarialTraining, robust_accuracy

from method_setups import margin_batches, margin_ctx, margin_mlp

load_all()
# a budget on which the W-steps move the weights: 4 updates over 4 x 10 steps, PGD 3 steps of eps 0.2
TINY = {"iterations": 4, "rho": 0.2, "lr": 0.05, "eps": 0.2, "alpha": 0.1, "steps": 3, "eval_batches": 2}


data, model = margin_batches, margin_mlp


def ctx(m=None, target="sparsity=0.75", epochs=4, **options):
    return margin_ctx(m, target, epochs, options)


def test_admm_stage_trains_on_pgd_batches_and_hard_prunes_every_layer_to_the_target():
    c = ctx(**TINY)
    res = get_method("adv-admm").run(c)
    t = res.telemetry
    assert t["attacked"] == 4 * 10  # every W-step batch was replaced by its PGD version
    assert t["updates"] == 4 and [h["step"] for h in res.info["history"]] == [0, 10, 20, 30, 40]
    assert t["rho_final"] == pytest.approx(0.2 * 1.3 ** 4)  # the growing penalty of the reference scheduler
    assert t["gap_last"] < 0.5 * t["gap_first"] and res.engaged is True  # measured 1.88 -> 0.58
    assert 0 <= t["robust_before"] <= 1 and 0 <= t["robust_after"] <= 1
    for fqn, m in get_masks(c.model).items():
        assert 1 - m.float().mean().item() == pytest.approx(0.75, abs=1e-6)
        w = dict(c.model.named_parameters())[fqn]
        assert torch.equal(w[~m], torch.zeros_like(w[~m]))
    retrain = res.callbacks[0]
    assert isinstance(retrain, AdversarialTraining) and retrain.eps == 0.2 and retrain.steps == 3


def test_the_w_steps_see_adversarial_examples_not_clean_ones():
    # same run with eps 0 is plain ADMM: the adversarial ADMM model is more robust on the training points
    a, p = ctx(**TINY), ctx(**{**TINY, "eps": 0.0})
    get_method("adv-admm").run(a)
    with pytest.warns(MechanismWarning):
        get_method("adv-admm").run(p)
    pts = data()
    ra = robust_accuracy(a.model, pts, eps=0.2, steps=10, alpha=0.05)["robust"]
    rp = robust_accuracy(p.model, pts, eps=0.2, steps=10, alpha=0.05)["robust"]
    assert ra > rp


def test_without_pgd_examples_it_is_plain_admm_and_warns_with_the_knob():
    with pytest.warns(MechanismWarning, match=r"options.eps > 0"):
        res = get_method("adv-admm").run(ctx(**{**TINY, "eps": 0.0}))
    assert res.engaged is False and res.telemetry["attacked"] == 0


def test_without_the_penalty_it_warns_with_the_knob():
    with pytest.warns(MechanismWarning, match=r"options.rho"):
        res = get_method("adv-admm").run(ctx(**{**TINY, "rho": 0.0}))
    assert res.engaged is False and res.telemetry["rho_final"] == 0.0


def test_filter_pattern_keeps_whole_rows():
    c = ctx(target="sparsity=0.5", **{**TINY, "pattern": "row"})
    get_method("adv-admm").run(c)
    m = get_masks(c.model)["0.weight"]
    rows = m.all(1) | ~m.any(1)
    assert rows.all() and int(m.all(1).sum()) == 12


def test_the_retraining_callback_keeps_the_pruned_weights_at_zero():
    c = ctx(**TINY)
    res = get_method("adv-admm").run(c)
    fit(c.model, data(), TrainConfig(epochs=1, lr=0.05, progress=False), callbacks=res.callbacks)
    assert res.callbacks[0].attacked == 10
    for fqn, m in get_masks(c.model).items():
        assert float(dict(c.model.named_parameters())[fqn].detach()[~m].abs().sum()) == 0.0


@pytest.mark.parametrize("options, fragment", [({"eps": -0.1}, "eps"), ({"steps": 0}, "steps"),
                                               ({"pattern": "column"}, "pattern"), ({"epss": 0.1}, "eps")])
def test_bad_options_are_config_errors_and_leave_the_model_unchanged(options, fragment):
    c = ctx(**options)
    before = copy.deepcopy(c.model.state_dict())
    with pytest.raises(ConfigError, match=fragment):
        get_method("adv-admm").run(c)
    assert all(torch.equal(before[k], v) for k, v in c.model.state_dict().items())


def test_missing_training_data_is_a_config_error():
    c = RunContext(model=model(), example_inputs=None, target="sparsity=0.5", options=TINY)
    with pytest.raises(ConfigError, match="train"):
        get_method("adv-admm").run(c)
