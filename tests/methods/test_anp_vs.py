"""anp-vs (Madaan et al., ICML 2020): Beta-Bernoulli channel masks trained on PGD examples with the vulnerability
suppression loss; channels with E[pi] <= 1e-3 removed physically.

Hand checks: the closed-form KL(Kumaraswamy || Beta(alpha, 1)) and E[pi] against Monte Carlo; the entry's unit
test (lambda = beta = 0 and the masks fixed at 1: the loss is plain adversarial CE); the VS term is
lambda * mean |z - z~| over the masked features; folding E[pi] and cutting leaves the eval-mode function
unchanged. The entry's Fashion-MNIST check is benchmarks/robust_checks.py (docs/methods-adversarial-2.md)."""
import copy

import pytest
import torch
import torch.nn.functional as F

from method_setups import conv_batches, conv_ctx, tiny_convnet
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods import get_method, load_all
from prunekit.methods._filter_common import filter_groups
from prunekit.methods.anp_vs import ANPVSTraining, BetaBernoulliMasks, cut_masked_, kl_kumaraswamy_beta
from prunekit.train.adversarial import pgd
from prunekit.train.callbacks import TrainState

load_all()
# the masks' budget knobs raised so that 12 steps move them (the paper trains 200 epochs at mask lr 1e-2)
TINY = {"eps": 0.3, "steps": 2, "kl_weight": 400.0, "mask_lr": 0.5, "eval_batches": 1}


def test_kl_and_expected_pi_match_monte_carlo():
    a, b, alpha = torch.tensor(0.5), torch.tensor(2.0), 0.3
    g = torch.Generator().manual_seed(0)
    u = torch.rand(400_000, generator=g, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    a64, b64 = a.double(), b.double()
    pi = (1 - u.pow(1 / b64)).pow(1 / a64)  # Kumaraswamy(a, b) by inverse CDF
    log_q = torch.log(a64 * b64) + (a64 - 1) * pi.log() + (b64 - 1) * torch.log1p(-pi.pow(a64))
    log_p = torch.log(torch.tensor(alpha, dtype=torch.float64)) + (alpha - 1) * pi.log()  # Beta(alpha, 1)
    assert float(kl_kumaraswamy_beta(a, b, alpha)) == pytest.approx(float((log_q - log_p).mean()), abs=0.02)
    masks = BetaBernoulliMasks({"g": ([], 1)}, a_init=0.0, b_init=0.0)
    with torch.no_grad():
        masks.a_uc["g"].fill_(0.3)
        masks.b_uc["g"].fill_(1.7)
        a1, b1 = masks.ab("g")
        mc = (1 - u.pow(1 / b1.double())).pow(1 / a1.double()).mean()
        assert float(masks.expected_pi("g")) == pytest.approx(float(mc), abs=2e-3)


def test_with_lambda_and_beta_zero_and_masks_fixed_at_one_the_loss_is_plain_adversarial_ce():
    model, (x, y) = tiny_convnet(), conv_batches(1, "tercile")[0]
    groups = filter_groups(model, conv_ctx(model, [(x, y)]))
    mods = dict(model.named_modules())
    masks = BetaBernoulliMasks({g.key: ([mods[f] for f in (g.bns or g.convs)], g.width) for g in groups}, fixed=True)
    cb = ANPVSTraining(masks, n=8, eps=0.3, steps=3, alpha=0.1, vs_weight=0.0, kl_weight=0.0, seed=5)
    plain = copy.deepcopy(model)  # the same weights without the masks' hooks
    for m in plain.modules():
        m._forward_hooks.clear()
    adv = pgd(plain, x, y, 0.3, 0.1, 3, generator=torch.Generator().manual_seed(5))
    state = TrainState(model=model, inputs=x, targets=y)
    model.train()
    plain.train()
    cb.on_batch_start(state)
    state.loss = F.cross_entropy(model(state.inputs), y)
    cb.on_before_backward(state)
    masks.remove()
    assert torch.equal(state.inputs, adv)
    assert float(state.loss.detach()) == pytest.approx(float(F.cross_entropy(plain(adv), y).detach()), abs=1e-6)


def test_the_vs_term_is_lambda_times_mean_feature_distortion_and_beta_adds_kl_over_n():
    model, (x, y) = tiny_convnet(), conv_batches(1, "tercile")[0]
    groups = filter_groups(model, conv_ctx(model, [(x, y)]))
    mods = dict(model.named_modules())
    gated = {g.key: [mods[f] for f in (g.bns or g.convs)] for g in groups}
    masks = BetaBernoulliMasks({k: (m, len(m[0].weight)) for k, m in gated.items()}, fixed=True)
    cb = ANPVSTraining(masks, n=80, eps=0.3, steps=3, alpha=0.1, vs_weight=2.0, kl_weight=0.0, seed=5)
    state = TrainState(model=model, inputs=x, targets=y)
    model.train()
    cb.on_batch_start(state)
    state.loss = F.cross_entropy(model(state.inputs), y)
    base = float(state.loss)
    cb.on_before_backward(state)
    masks.remove()
    feats = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, k=k: feats.setdefault(k, []).append(o))
             for k, ms in gated.items() for m in ms]
    model(x)
    clean = {k: v[0] for k, v in feats.items()}
    feats.clear()
    model(state.inputs)
    vs = torch.stack([(clean[k] - feats[k][0]).abs().mean() for k in clean]).mean()
    for h in hooks:
        h.remove()
    assert float(vs) > 0 and float(state.loss) - base == pytest.approx(2.0 * float(vs), rel=1e-5)
    beta = BetaBernoulliMasks({k: (m, len(m[0].weight)) for k, m in gated.items()})
    cb = ANPVSTraining(beta, n=80, eps=0.0, steps=1, vs_weight=0.0, kl_weight=4.0)
    state = TrainState(model=model, inputs=x, targets=y, loss=torch.tensor(0.0))
    cb.on_batch_start(state)
    cb.on_before_backward(state)
    beta.remove()
    assert float(state.loss) == pytest.approx(4.0 * float(beta.kl()) / 80, rel=1e-6)


def test_folding_the_test_time_mask_and_cutting_keeps_the_eval_function():
    model, data = tiny_convnet(), conv_batches(2, "tercile")
    ctx = conv_ctx(model, data)
    groups = filter_groups(model, ctx)
    mods = dict(model.named_modules())
    gated = {g.key: (g.bns or g.convs) for g in groups}
    masks = BetaBernoulliMasks({k: ([mods[f] for f in fs], g.width) for (k, fs), g in zip(gated.items(), groups)})
    with torch.no_grad():  # a few channels far below the threshold, the others at assorted E[pi]
        for k in masks.a_uc:
            masks.a_uc[k].copy_(torch.linspace(-8.0, 2.0, len(masks.a_uc[k])))
    model.eval()
    x = data[0][0]
    want = model(x).detach()
    epi = {k: masks.expected_pi(k).detach() for k in gated}
    masks.remove()
    under = cut_masked_(model, ctx, gated, epi, 1e-3)
    assert sum(len(v) for v in under.values()) >= 2
    assert [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)] == \
        [len(e) - len(under[k]) for k, e in epi.items()]
    assert torch.allclose(model(x), want, atol=1e-5)


def test_masks_driven_below_the_threshold_are_cut_physically_and_the_run_is_engaged():
    model, data = tiny_convnet(), conv_batches(6, "tercile")
    c = conv_ctx(model, data, prune_epochs=2, options=TINY)
    res = get_method("anp-vs").run(c)
    t = res.telemetry
    assert t["attacked"] == 12 and t["channels"] == 10
    assert t["channels_under_threshold"] >= 1 and res.engaged is True
    assert res.info["kept_macs_fraction"] <= 0.5 + 1e-6
    widths = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert sum(widths) == 10 - t["channels_under_threshold"] - t["topped_up"]
    assert t["vulnerability_before"] > 0 and res.callbacks[0].eps == 0.3


def test_without_the_prior_term_no_mask_reaches_the_threshold_and_it_warns_with_the_knob():
    model, data = tiny_convnet(), conv_batches(6, "tercile")
    c = conv_ctx(model, data, prune_epochs=1, options={**TINY, "kl_weight": 0.0, "mask_lr": 0.01})
    with pytest.warns(MechanismWarning, match="options.kl_weight"):
        res = get_method("anp-vs").run(c)
    assert res.engaged is False and res.telemetry["channels_under_threshold"] == 0
    assert res.telemetry["topped_up"] > 0  # the target was met by the reported top-up alone


@pytest.mark.parametrize("options, fragment", [({"eps": -1.0}, "eps"), ({"threshold": 1.5}, "threshold"),
                                               ({"vs_wieght": 1.0}, "vs_weight"),
                                               ({"clean_weight": 2.0}, "clean_weight")])
def test_bad_options_are_config_errors_and_leave_the_model_unchanged(options, fragment):
    model, data = tiny_convnet(), conv_batches(2, "tercile")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match=fragment):
        get_method("anp-vs").run(conv_ctx(model, data, options=options))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_zero_prune_epochs_is_a_config_error():
    model, data = tiny_convnet(), conv_batches(2, "tercile")
    with pytest.raises(ConfigError, match="prune_epochs"):
        get_method("anp-vs").run(conv_ctx(model, data, prune_epochs=0))
