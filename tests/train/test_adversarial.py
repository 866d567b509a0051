"""The adversarial block (prunekit.train.adversarial): FGSM and PGD by hand on a linear model, the eps ball and
the data clamp, no side effects on the model, robust accuracy, and the adversarial-training callback."""
import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.train import TrainConfig, fit
from prunekit.train.adversarial import AdversarialTraining, InputSpace, fgsm, pgd, robust_accuracy

W = [[1.0, -2.0, 0.5], [-1.0, 2.0, 0.25]]


def linear():
    m = nn.Linear(3, 2)
    with torch.no_grad():
        m.weight.copy_(torch.tensor(W))
        m.bias.zero_()
    return m


def test_fgsm_on_a_two_class_linear_model_steps_eps_times_sign_of_w_other_minus_w_true():
    # CE gradient in x for 2 classes: (p_other)(w_other - w_true); its sign is sign(w_other - w_true)
    m, x = linear(), torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.5, -0.4]])
    y = torch.tensor([0, 1])
    adv = fgsm(m, x, y, 0.1)
    w = torch.tensor(W)
    expected = torch.stack([x[0] + 0.1 * torch.sign(w[1] - w[0]), x[1] + 0.1 * torch.sign(w[0] - w[1])])
    assert torch.allclose(adv, expected)


def test_pgd_reaches_the_analytic_worst_case_of_a_linear_model_and_stays_in_the_ball():
    # worst case of a linear 2-class margin on the L-inf ball: the corner x + eps * sign(w_other - w_true)
    m, x, y = linear(), torch.randn(6, 3, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1] * 3)
    w = torch.tensor(W)
    d = torch.where(y[:, None] == 0, w[1] - w[0], w[0] - w[1])
    adv = pgd(m, x, y, eps=0.2, alpha=0.05, steps=10, random_start=True,
              generator=torch.Generator().manual_seed(0))
    assert (adv - x).abs().max() <= 0.2 + 1e-6
    assert torch.allclose(adv, x + 0.2 * d.sign(), atol=1e-6)
    # too few steps from a random start cannot reach the corner: the ball bound holds all the same
    short = pgd(m, x, y, eps=0.2, alpha=0.01, steps=2, random_start=True, generator=torch.Generator().manual_seed(0))
    assert (short - x).abs().max() <= 0.2 + 1e-6 and not torch.allclose(short, x + 0.2 * d.sign(), atol=1e-3)


def test_attacks_respect_the_normalised_space_radius_and_clamp():
    space = InputSpace(mean=(0.5,), std=(0.25,))
    m = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    x = (torch.tensor([[0.0, 1.0, 0.5, 0.98]]).view(1, 1, 2, 2) - 0.5) / 0.25  # pixels 0, 1, 0.5, 0.98
    y = torch.tensor([1])
    adv = pgd(m, x, y, eps=0.1, alpha=0.05, steps=5, space=space)
    pixels = adv * 0.25 + 0.5
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6  # clamped to [0, 1] in pixel units
    assert ((adv - x).abs() <= 0.1 / 0.25 + 1e-6).all()  # eps in pixels = eps / std normalised
    assert (adv - x).abs().max() == pytest.approx(0.4, abs=1e-5)  # the free pixel (0.5) reaches the ball


def test_attacks_keep_the_model_mode_and_touch_no_parameter_gradient():
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).train()
    stats = m[1].running_mean.clone()
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    pgd(m, x, y, 0.1, 0.05, 3)
    fgsm(m, x, y, 0.1)
    assert m.training and all(p.grad is None for p in m.parameters())
    assert torch.equal(m[1].running_mean, stats)  # attacks run in eval mode: no BN statistics move


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    return [(x[i:i + 16], (x[i:i + 16] @ torch.tensor([1.0, -1.0, 0.5]) > 0).long()) for i in range(0, 64, 16)]


def test_robust_accuracy_is_at_most_clean_and_eps_zero_equals_clean():
    m, data = linear(), _data()
    zero = robust_accuracy(m, data, eps=0.0, steps=3)
    assert zero["robust"] == zero["clean"] and zero["n"] == 64
    for kind in ("fgsm", "pgd"):
        r = robust_accuracy(m, data, attack=kind, eps=0.3, steps=5)
        assert r["robust"] < r["clean"]  # eps 0.3 flips some points near the boundary
    assert robust_accuracy(m, data, eps=0.3, batches=1)["n"] == 16


def test_adversarial_training_replaces_every_batch_and_raises_robust_accuracy():
    data = _data()
    torch.manual_seed(0)
    plain, adv = nn.Linear(3, 2), nn.Linear(3, 2)
    adv.load_state_dict(plain.state_dict())
    cfg = TrainConfig(epochs=15, lr=0.1, progress=False, seed=0)
    fit(plain, data, cfg)
    cb = AdversarialTraining(0.3, steps=3)
    fit(adv, data, cfg, callbacks=[cb])
    assert cb.attacked == 15 * len(data)
    r_plain = robust_accuracy(plain, data, eps=0.3, steps=10)["robust"]
    r_adv = robust_accuracy(adv, data, eps=0.3, steps=10)["robust"]
    assert r_adv > r_plain


@pytest.mark.parametrize("kw, fragment", [({"eps": -0.1}, "eps=-0.1"), ({"eps": 0.1, "steps": 0}, "steps=0"),
                                          ({"eps": 0.1, "attack": "cw"}, "attack='cw'")])
def test_bad_arguments_are_config_errors_naming_them(kw, fragment):
    with pytest.raises(ConfigError, match=fragment):
        AdversarialTraining(**kw)
