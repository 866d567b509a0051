"""GAL (Lin et al., CVPR 2019): channel masks by FISTA under an adversarial + MSE match to the unpruned net."""
import copy
import math

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods import get_method, load_all
from prunekit.methods._filter_common import ChannelGates, bn_layers, cut_to_target
from prunekit.methods.gal import GALAdversarial, discriminator_loss, fista_step, generator_loss
from prunekit.models.heads import Discriminator
from prunekit.train import fit

from method_setups import conv_batches, conv_ctx, tiny_convnet

load_all()


def test_the_proximal_step_zeros_exactly_the_masks_under_the_threshold_and_adds_fista_momentum():
    """lr * lam = 0.01 * 0.6 = 0.006: a mask of 0.005 (under it) becomes exactly 0, 0.5 becomes 0.494, -0.1
    becomes -0.094; no momentum on the first step (t = 1). Second step, zero gradient: z = m - 0.006 shrunk
    again, then m = z + (t1 - 1)/t2 * (z - z1) with t1 = (1 + sqrt 5)/2, t2 = (1 + sqrt(1 + 4 t1^2))/2."""
    m = torch.tensor([0.005, 0.5, -0.1], dtype=torch.float64)
    m1, z1, t1 = fista_step(m, torch.zeros(3, dtype=torch.float64), m.clone(), 1.0, lr=0.01, lam=0.6)
    assert m1[0] == 0.0 and torch.allclose(m1, torch.tensor([0.0, 0.494, -0.094], dtype=torch.float64))
    assert t1 == pytest.approx((1 + math.sqrt(5)) / 2)
    m2, z2, t2 = fista_step(m1, torch.zeros(3, dtype=torch.float64), z1, t1, lr=0.01, lam=0.6)
    c = (t1 - 1) / ((1 + math.sqrt(1 + 4 * t1 * t1)) / 2)
    assert torch.allclose(z2, torch.tensor([0.0, 0.488, -0.088], dtype=torch.float64))
    assert torch.allclose(m2, z2 + c * (z2 - z1)) and m2[0] == 0.0 and m2[1] < z2[1]
    # a gradient moves the point before the threshold: grad -1 on a zero mask, lr 0.01 -> 0.01 - 0.006 = 0.004
    m3, _, _ = fista_step(torch.zeros(1, dtype=torch.float64), -torch.ones(1, dtype=torch.float64),
                          torch.zeros(1, dtype=torch.float64), 1.0, lr=0.01, lam=0.6)
    assert m3.item() == pytest.approx(0.004)


def test_adversarial_losses_have_the_right_signs():
    """A discriminator step on its loss raises its accuracy on a fixed (teacher, student) pair; a step of the
    student's logits on the generator loss raises the discriminator's 'real' score of them."""
    torch.manual_seed(0)
    disc = Discriminator(4, hidden=(8,))
    real, fake = torch.randn(16, 4) + 1.0, torch.randn(16, 4) - 1.0

    def acc():
        with torch.no_grad():
            return float(((disc(real) > 0).float().mean() + (disc(fake) <= 0).float().mean()) / 2)

    before, opt = acc(), torch.optim.SGD(disc.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        discriminator_loss(disc, real, fake).backward()
        opt.step()
    assert acc() > before
    f = fake.clone().requires_grad_(True)
    score = float(disc(f).mean().detach())
    generator_loss(disc, f).backward()
    with torch.no_grad():
        assert float(disc(f - 0.5 * f.grad).mean()) > score


def test_removing_the_zero_mask_channels_leaves_the_logits_unchanged():
    """Entry check (b) on the tiny conv net: two masks start at 0.01 (under the first step's threshold
    lr * lam = 0.1 * 0.6), the others at 1; six FISTA steps under the callback zero exactly the two, then the masks
    are folded and the zero-mask channels cut (a loose target): the logits are those of the masked network."""
    m = tiny_convnet()
    data = conv_batches(6, labels="tercile")
    teacher = copy.deepcopy(m).eval()
    gates = ChannelGates(m, [f for f, _ in bn_layers(m)])
    with torch.no_grad():
        gates.gates["1"][0] = gates.gates["4"][2] = 0.01
    cb = GALAdversarial(teacher, gates, Discriminator(3), lam=0.6, mask_step=1)
    fit(m, data, pk.TrainConfig(epochs=1, lr=0.1, weight_decay=0.0, scheduler="constant", progress=False),
        callbacks=[cb])
    zero = {f: (g == 0).nonzero().flatten().tolist() for f, g in gates.gates.items()}
    assert cb.fista_steps == 6 and zero == {"1": [0], "4": [2]}
    x = torch.randn(8, 1, 6, 6)
    m.eval()
    with torch.no_grad():
        masked = m(x)
    scores = {f: g.detach().abs().clone() for f, g in gates.gates.items()}
    gates.fold_()
    rep = cut_to_target(m, conv_ctx(m, data, target="macs=0.99"), scores, allocation="global")
    assert rep["removed_channels"] == 2 and m[0].out_channels == 3 and m[3].out_channels == 5
    with torch.no_grad():
        assert float((m(x) - masked).abs().max()) < 1e-5


def _run(**options):
    m = tiny_convnet()
    data = conv_batches(6, labels="tercile")
    before = sum(p.numel() for p in m.parameters())
    res = get_method("gal").run(conv_ctx(m, data, prune_epochs=3, options=options))
    return m, res, before


def test_engaged_with_the_entry_mask_step_and_the_model_is_physically_smaller_at_the_target():
    """Paper defaults except mask_step, lowered as the entry's check does so FISTA gets enough steps (18)."""
    m, res, before = _run(mask_step=1)
    t = res.telemetry
    assert res.engaged is True and t["fista_steps"] == 18 and t["zero_mask_fraction"] > 0
    assert t["emergent"] >= 1 and t["emergent"] + t["topped_up"] == res.info["removed_channels"]
    assert 0 <= t["d_accuracy"] <= 1 and t["mse"] >= 0
    assert sum(p.numel() for p in m.parameters()) < before
    assert pk.measure(m, torch.zeros(1, 1, 6, 6)).macs <= 0.5 * pk.measure(tiny_convnet(), torch.zeros(1, 1, 6, 6)).macs


def test_no_l1_weight_warns_naming_lam():
    with pytest.warns(MechanismWarning, match="options.lam"):
        _, res, _ = _run(mask_step=1, lam=0.0)
    assert res.engaged is False and res.telemetry["zero_mask_fraction"] == 0 and res.telemetry["topped_up"] > 0


def test_bad_input_is_refused_and_leaves_the_model_as_it_was():
    m = tiny_convnet()
    data = conv_batches(2)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ConfigError, match="mask_step"):
        get_method("gal").run(conv_ctx(m, data, options={"mask_step": 0}))
    with pytest.raises(ConfigError, match="lam"):
        get_method("gal").run(conv_ctx(m, data, options={"lam": -0.1}))
    with pytest.raises(ConfigError, match="prune_epochs"):
        get_method("gal").run(conv_ctx(m, data, prune_epochs=0))
    with pytest.raises(ConfigError, match="train"):
        get_method("gal").run(conv_ctx(m, data, train_data=None))
    nobn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    with pytest.raises(ConfigError, match="BatchNorm"):
        get_method("gal").run(conv_ctx(nobn, data))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


@pytest.mark.heavy  # minutes of CPU: make test-heavy
@pytest.mark.skipif(not __import__("os").path.exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"),
                    reason="Fashion-MNIST not installed (make data)")
def test_small_scale_at_the_entry_budget_channel_masks_shrink_together_and_none_reaches_zero():
    """Entry check on the shipped ResNet-20 (Fashion-MNIST, 10k training images, 2,000 test images), channel masks
    (the entry's block masks are left out), lam 0.6, mask_step lowered from 200 to 10 as the entry does, 3 epochs
    of GAL at lr 0.01 from the baseline (24 FISTA steps), then the masks folded, the zero-mask channels cut and
    2 epochs of fine-tuning. Calibration (command: pytest -m slow -s tests/methods/test_gal.py, shared 2-core
    machine, 270 s): every mask of every BatchNorm went from 1 to between 0.412 and 0.424, none to 0; the masked net
    scored 9.15% (dense 92.90%), 92.20% after the fine-tune. The entry's (a) ">= 1 mask exactly 0" does not
    reproduce with channel masks at this budget (the L1 step lr * lam = 0.006 per FISTA step dominates the masks'
    data gradients, which the weights absorb); the test asserts what is true: the masks moved together (spread
    < 0.05), none reached 0, and the net recovers within 2 pt of the baseline. The removal of zero-mask channels
    being exact (entry b) is the fast test above."""
    from prunekit.methods.gal import GALAdversarial
    from prunekit.train.baseline import load_baseline

    torch.set_num_threads(1)
    b = pk.data.load("fashion-mnist", batch_size=128, subset=(10000, 2000), val_fraction=0.0, augment=False)
    tc = pk.TrainConfig(lr=0.01, momentum=0.9, weight_decay=2e-4, scheduler="constant", progress=False)
    m = load_baseline("resnet20-fashion-mnist")
    dense = pk.evaluate(m, b.test)["accuracy"]
    gates = ChannelGates(m, [f for f, _ in bn_layers(m)])
    cb = GALAdversarial(copy.deepcopy(m).eval(), gates, Discriminator(10), lam=0.6, mask_step=10)
    fit(m, b.train, tc.replace(epochs=3), callbacks=[cb])
    masks = torch.cat([g.detach() for g in gates.gates.values()])
    masked_acc = pk.evaluate(m, b.test)["accuracy"]
    gates.fold_()
    fit(m, b.train, tc.replace(epochs=2))
    acc = pk.evaluate(m, b.test)["accuracy"]
    print({"dense": dense, "fista_steps": cb.fista_steps, "mask_min": float(masks.min()), "mask_max": float(masks.max()),
           "zero_masks": int((masks == 0).sum()), "masked_acc": masked_acc, "finetuned": acc,
           "d_accuracy": cb.d_accuracy()})
    assert cb.fista_steps == 24
    assert int((masks == 0).sum()) == 0 and 0 < float(masks.min()) and float(masks.max()) < 1
    assert float(masks.max() - masks.min()) < 0.05
    assert acc >= dense - 0.02
