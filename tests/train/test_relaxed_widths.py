"""Relaxed width distributions (prunekit/train/relaxed_widths.py): Gumbel-softmax over candidate widths, prefix
masks, TAS's channel-wise interpolation and the differentiable expected cost (MACs, parameters, table latency)."""
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.graph import build_graph
from prunekit.measure.latency_table import LatencyTable
from prunekit.train.relaxed_widths import (RelaxedWidths, WidthDistribution, candidate_widths,
                                           channel_wise_interpolation, gumbel_softmax, tau_schedule)

X = torch.randn(2, 1, 6, 6)


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))


def relaxed(model, ratios=(0.5, 0.75, 1.0)):
    g = build_graph(model, X)
    return RelaxedWidths(g, {grp.id: grp.width for grp in g.groups}, ratios)


def test_candidates_are_tas_fractions_of_the_width_truncated_and_distinct():
    assert candidate_widths(16) == [4, 6, 8, 9, 11, 12, 14, 16]  # int(r * 16), r = 0.3 .. 1.0
    assert candidate_widths(2) == [1, 2]
    with pytest.raises(ConfigError, match="ratios"):
        candidate_widths(8, (0.0, 1.0))


def test_straight_through_forward_is_one_hot_and_its_gradient_is_the_soft_samples():
    logits = torch.tensor([0.3, -1.0, 2.0, 0.5], requires_grad=True)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    hard = gumbel_softmax(logits, 0.7, hard=True, generator=torch.Generator().manual_seed(3))
    assert sorted(hard.tolist()) == [0.0, 0.0, 0.0, 1.0]
    (g_hard,) = torch.autograd.grad((hard * w).sum(), logits)
    soft = gumbel_softmax(logits, 0.7, hard=False, generator=torch.Generator().manual_seed(3))
    assert int(hard.argmax()) == int(soft.argmax())  # the same noise
    (g_soft,) = torch.autograd.grad((soft * w).sum(), logits)
    assert torch.allclose(g_hard, g_soft) and g_soft.abs().sum() > 0


def test_gumbel_samples_follow_the_distribution():
    logits = torch.log(torch.tensor([0.1, 0.6, 0.3]))
    g = torch.Generator().manual_seed(0)
    counts = torch.stack([gumbel_softmax(logits, 1.0, hard=True, generator=g) for _ in range(4000)]).mean(0)
    assert counts.tolist() == pytest.approx([0.1, 0.6, 0.3], abs=0.03)


def test_prefix_masks_and_keep_probabilities_as_computed_by_hand():
    d = WidthDistribution(4, ratios=(0.25, 0.5, 1.0), logits=torch.log(torch.tensor([0.2, 0.3, 0.5])))
    assert d.candidates.tolist() == [1, 2, 4]
    # channel 0 is kept by every candidate, 1 by widths 2 and 4, 2-3 by width 4 only
    assert d.keep_probability().tolist() == pytest.approx([1.0, 0.8, 0.5, 0.5])
    assert d.expected_width().item() == pytest.approx(0.2 * 1 + 0.3 * 2 + 0.5 * 4)
    mix = d.prefix_mask(torch.tensor([0.25, 0.75]), torch.tensor([0, 2]))  # 0.25 * [1,0,0,0] + 0.75 * [1,1,1,1]
    assert mix.tolist() == pytest.approx([1.0, 0.75, 0.75, 0.75])
    assert d.entropy().item() == pytest.approx(-sum(p * np.log(p) for p in (0.2, 0.3, 0.5)), rel=1e-5)


def test_tas_two_candidate_sample_draws_two_distinct_widths_with_renormalised_differentiable_weights():
    d = WidthDistribution(16)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        idx, w = d.sample_two(5.0, generator=g)
        assert len(set(idx.tolist())) == 2 and w.sum().item() == pytest.approx(1.0)
    (grad,) = torch.autograd.grad(w[0], d.logits)
    assert grad.abs().sum() > 0


def test_channel_wise_interpolation_returns_x_when_sizes_match_and_keeps_the_channel_mean():
    x = torch.randn(2, 3, 4, 4)
    assert channel_wise_interpolation(x, 3) is x
    y = channel_wise_interpolation(x, 6)  # a whole factor: every channel twice
    assert y.shape == (2, 6, 4, 4) and torch.allclose(y[:, ::2], x) and torch.allclose(y[:, 1::2], x)
    assert torch.allclose(y.mean(1), x.mean(1))
    z = channel_wise_interpolation(x[:, :2], 3)  # 2 -> 3 by hand: x0, (x0 + x1) / 2, x1
    assert torch.allclose(z[:, 1], (x[:, 0] + x[:, 1]) / 2) and torch.allclose(z.mean(1), x[:, :2].mean(1))


def test_expected_cost_at_a_one_hot_distribution_equals_the_engines_exact_cost():
    rw = relaxed(net())
    widths = {}
    with torch.no_grad():
        for k, (gid, d) in enumerate(rw.dists.items()):
            d.logits.fill_(-50.0)
            d.logits[k % len(d.candidates)] = 50.0
            widths[gid] = int(d.candidates[k % len(d.candidates)])
    assert rw.argmax_widths() == widths
    for kind in ("macs", "params"):
        assert rw.expected_cost(kind).item() == pytest.approx(rw.exact_cost(widths, kind), rel=1e-12)
    assert rw.exact_cost({gid: d.width for gid, d in rw.dists.items()}) == rw.graph.macs()


def test_expected_cost_gradient_matches_finite_differences():
    rw = relaxed(net())
    torch.manual_seed(1)
    for d in rw.dists.values():  # float64 logits: finite differences need the precision
        d.logits = torch.randn(len(d.candidates), dtype=torch.float64).requires_grad_(True)
    cost = rw.expected_cost("macs")
    grads = torch.autograd.grad(cost, rw.parameters())
    h = 1e-4
    for d, g in zip(rw.dists.values(), grads):
        for k in range(len(d.candidates)):
            with torch.no_grad():
                d.logits[k] += h
                up = float(rw.expected_cost("macs"))
                d.logits[k] -= 2 * h
                down = float(rw.expected_cost("macs"))
                d.logits[k] += h
            assert float(g[k]) == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-6)


def test_expected_latency_is_the_exact_expectation_of_the_table_and_exact_at_one_hot():
    m = net()
    table = LatencyTable.build(m, X, warmup=0, runs=1, grid=(0.5, 0.75, 1.0))
    rw = relaxed(m, ratios=(0.5, 1.0))
    ids = list(rw.dists)
    residual = table.dense_ms - table.layers_ms()

    def latency(w):  # the table's time of the model cut to widths w (group id -> kept prefix)
        a, b = w[ids[0]], w[ids[1]]
        return (table.layer_ms("0", 1, a) + table.layer_ms("1", a, a) + table.layer_ms("3", a, b)
                + table.layer_ms("4", b, b) + table.layer_ms("8", b, 3) + residual)

    probs = {gid: d.probs().detach() for gid, d in rw.dists.items()}
    brute = sum(float(np.prod([float(probs[g][i]) for g, i in zip(ids, combo)]))
                * latency({g: int(rw.dists[g].candidates[i]) for g, i in zip(ids, combo)})
                for combo in itertools.product(*(range(len(rw.dists[g].candidates)) for g in ids)))
    assert rw.expected_latency(table).item() == pytest.approx(brute, rel=1e-9)
    with torch.no_grad():
        for d in rw.dists.values():
            d.logits.copy_(torch.tensor([50.0, -50.0]))
    assert rw.expected_latency(table).item() == pytest.approx(latency(rw.argmax_widths()), rel=1e-9)
    torch.autograd.grad(rw.expected_latency(table), rw.parameters())  # differentiable


def test_groups_of_another_width_are_refused_and_tau_anneals_linearly():
    g = build_graph(net(), X)
    with pytest.raises(ConfigError, match="widths for groups"):
        RelaxedWidths(g, {g.groups[0].id: 99})
    assert [tau_schedule(e, 3, 5.0, 0.1) for e in range(3)] == pytest.approx([5.0, 2.55, 0.1])
