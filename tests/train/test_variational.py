"""The variational channel gates: KL terms by hand, reparameterised noise, folding, the posterior's own step."""
import math

import pytest
import torch
from torch import nn

from prunekit.train import TrainConfig, fit
from prunekit.train.variational import (BNSaliencyPosterior, ChannelNoiseGates, kl_gaussian, kl_log_uniform,
                                        log_alpha, n_examples, snr)


def test_gaussian_kl_matches_the_closed_form_by_hand():
    # mu = 0.5, sigma = 0.05, prior sigma 0.1: log(0.1/0.05) + (0.0025 + 0.25) / 0.02 - 0.5
    kl = kl_gaussian(torch.tensor([0.5, 0.0]), torch.log(torch.tensor([0.05 ** 2, 0.1 ** 2])), 0.1)
    assert kl[0].item() == pytest.approx(math.log(2) + 12.625 - 0.5, rel=1e-5)
    assert kl[1].item() == pytest.approx(0.0, abs=1e-6)  # the posterior equal to the prior costs nothing


def test_log_uniform_kl_falls_with_log_alpha_and_vanishes_for_pure_noise():
    la = torch.tensor([-6.0, -2.0, 0.0, 3.0, 8.0])
    kl = kl_log_uniform(torch.ones(5), la)  # mu = 1: log alpha = log sigma^2
    assert bool((kl[:-1] > kl[1:]).all())
    assert kl_log_uniform(torch.ones(1), torch.tensor([20.0])).item() == pytest.approx(0.0, abs=1e-4)
    assert log_alpha(torch.tensor([0.1]), torch.log(torch.tensor([0.1]))).item() == pytest.approx(math.log(10))
    assert snr(torch.tensor([-0.3]), torch.log(torch.tensor([0.01]))).item() == pytest.approx(3.0)


def test_bn_saliency_noise_is_sigma_times_eps_times_x_hat_and_off_in_eval():
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(2)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.1, -0.1]))
    post = BNSaliencyPosterior({"bn": bn}, prior_sigma=1.0, init_sigma=0.3, seed=3)
    x = torch.randn(5, 2)
    noisy = bn(x)
    x_hat = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + bn.eps)
    eps = torch.randn(5, 2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(noisy, x_hat * bn.weight + bn.bias + 0.3 * eps * x_hat)
    bn.eval()
    post.remove()
    plain = bn(x)
    post2 = BNSaliencyPosterior({"bn": bn}, init_sigma=0.3)
    torch.testing.assert_close(bn(x), plain)  # eval: the posterior mean, i.e. the plain BN
    post2.remove()


def test_noise_gate_fold_is_exact_and_removes_the_hooks():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 2)).eval()
    gates = ChannelNoiseGates({"0": net[0]})
    with torch.no_grad():
        gates.mu["0"].copy_(torch.tensor([0.0, 0.5, 2.0]))
    x = torch.randn(2, 1, 6, 6)
    gated = net(x).detach()
    gates.fold_()
    torch.testing.assert_close(net(x), gated)
    assert not net[0]._forward_hooks and float(net[0].weight[0].detach().abs().sum()) == 0


def test_the_posterior_trains_inside_fit_and_the_kl_joins_the_loss():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    data = [(torch.randn(8, 3), torch.randint(0, 2, (8,))) for _ in range(4)]
    post = BNSaliencyPosterior({"1": net[1]}, prior_sigma=0.1, init_sigma=0.05, kl_weight=1 / n_examples(data))
    start = post.log_sigma2["1"].detach().clone()
    fit(net, data, TrainConfig(lr=0.05, progress=False), callbacks=[post])
    assert n_examples(data) == 32 and post.steps == 4
    assert not torch.equal(post.log_sigma2["1"].detach(), start)  # the log-variances moved (their own Adam)
    assert post.last_kl > 0


def test_the_callback_state_round_trips_so_training_resumes_exactly():
    torch.manual_seed(0)
    lin = nn.Linear(2, 3)
    g = ChannelNoiseGates({"lin": lin}, seed=1)
    x = torch.randn(4, 2)
    (lin(x) ** 2).sum().backward()
    g.on_after_step(None)
    state = g.state_dict()
    twin = ChannelNoiseGates({"lin": nn.Linear(2, 3)}, seed=7)
    twin.load_state_dict(state)
    assert torch.equal(twin.mu["lin"], g.mu["lin"]) and twin.steps == 1
    assert torch.equal(torch.randn(3, generator=twin.generator), torch.randn(3, generator=g.generator))
    assert twin.optimizer.state_dict()["state"][0]["exp_avg"].equal(g.optimizer.state_dict()["state"][0]["exp_avg"])
