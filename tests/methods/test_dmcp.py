"""DMCP (Guo et al., CVPR 2020): Markov width chains, sandwich supernet, expected-FLOPs loss, cut on the grid."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods import get_method, load_all
from prunekit.methods.dmcp import ArchStep, DMCPConfig, MarkovWidths, markov_marginals
from prunekit.train.slimmable import Slimmable, WidthSampler

from method_setups import conv_batches, search_ctx, tiny_convnet

load_all()


def test_marginal_width_probabilities_by_hand_on_a_small_chain():
    # alpha = (0, ln 3, ln 1/3): p = (1/2, 3/4, 1/4); marginals = (1/2, 3/8, 3/32)
    marg = markov_marginals(torch.tensor([0.0, math.log(3), -math.log(3)], dtype=torch.float64))
    assert torch.allclose(marg, torch.tensor([0.5, 0.375, 0.09375], dtype=torch.float64))
    # Linear(3 -> 10) -> Linear(10 -> 2); width 10 on the grid (0.2, 0.6, 1.0): cuts 2 | 6 | 10
    m = nn.Sequential(nn.Linear(3, 10, bias=False), nn.ReLU(), nn.Linear(10, 2, bias=False))
    slim = Slimmable(m, torch.randn(1, 3))
    chains = MarkovWidths(WidthSampler(slim.space, grid=(0.2, 0.6, 1.0)), alpha_init=0.0)
    with torch.no_grad():
        chains.alphas[0].copy_(torch.tensor([0.0, math.log(3)], dtype=torch.float64))
    assert chains.cuts[0].tolist() == [2, 6, 10]
    assert torch.allclose(chains.channel_keep()[0], torch.tensor([1, 1] + [0.5] * 4 + [0.375] * 4, dtype=torch.float64))
    assert math.isclose(chains.expected_widths()[0], 2 + 4 * 0.5 + 4 * 0.375)  # 5.5 channels
    # the width distribution: P(2) = 1/2, P(6) = 1/2 - 3/8, P(10) = 3/8
    p = np.array([0.5, 0.125, 0.375])
    assert math.isclose(chains.entropy(), float(-(p * np.log(p)).sum()), rel_tol=1e-9)
    # expected MACs from the expected channel count of consecutive layers: 3 * 5.5 + 5.5 * 2 of 3 * 10 + 10 * 2
    arch = ArchStep(slim, chains, "macs", 0.5, DMCPConfig())
    assert math.isclose(float(arch.expected().detach()), (3 * 5.5 + 5.5 * 2) / 50)


def _ctx(target="macs=0.4", epochs=4, **options):
    ctx = search_ctx(tiny_convnet(), target, **options)
    ctx.train_data = conv_batches(24, labels="tercile")
    ctx.prune_epochs = epochs
    return ctx


def test_the_alphas_move_the_expected_cost_to_the_target_and_the_cut_is_on_the_grid():
    ctx = _ctx()
    res = get_method("dmcp").run(ctx)
    t = res.telemetry
    assert res.engaged is True and t["alpha_steps"] == 48  # 2 DMCP epochs of 24 batches
    assert t["cost_gap_end"] < t["cost_gap_start"] - 0.1
    assert abs(t["expected_cost"] - 0.4) <= 0.05 * 0.4  # within +-5% of the target after the DMCP stage
    for marg in res.info["marginals"].values():  # non-increasing along the chain, by construction
        assert all(a >= b for a, b in zip(marg, marg[1:]))
    assert res.info["widths"] == {"0": ctx.model[0].out_channels, "3": ctx.model[3].out_channels}
    grid = {0: {1, 2, 3, 4}, 3: {1, 2, 3, 4, 5, 6}}  # ceil(r * width) for r = 0.1, ..., 1.0
    assert ctx.model[0].out_channels in grid[0] and ctx.model[3].out_channels in grid[3]
    assert t["cut_cost"] <= 0.4


def test_without_alpha_steps_that_move_the_cost_it_warns():
    with pytest.warns(MechanismWarning, match="options.arch_lr"):
        res = get_method("dmcp").run(_ctx(epochs=1, arch_lr=1e-9))
    assert res.engaged is False and abs(res.telemetry["cost_gap_end"] - res.telemetry["cost_gap_start"]) < 1e-6


def test_reinit_false_keeps_the_supernet_weights_of_the_kept_channels():
    ctx = _ctx(epochs=1, reinit=False, recal_batches=0)
    res = get_method("dmcp").run(ctx)
    w = res.info["widths"]["0"]
    assert ctx.model[0].weight.shape[0] == w
    # reinit=True draws fresh weights: the first conv differs from the supernet's at the same widths
    ctx2 = _ctx(epochs=1, recal_batches=0)
    get_method("dmcp").run(ctx2)
    if ctx2.model[0].weight.shape == ctx.model[0].weight.shape:
        assert not torch.allclose(ctx2.model[0].weight, ctx.model[0].weight)


def test_bad_options_are_refused_and_the_model_is_left_as_it_was():
    ctx = _ctx(epochs=1, stage1_share=1.0, offset=0.0)
    before = copy.deepcopy(ctx.model.state_dict())
    with pytest.raises(ConfigError, match=r"options\['stage1_share'\]=1.0 must be < 1.*options\['offset'\]=0.0"):
        get_method("dmcp").run(ctx)
    assert all(torch.equal(v, ctx.model.state_dict()[k]) for k, v in before.items())


@pytest.mark.slow
def test_entry_check_scaled_expected_macs_within_5_percent_of_the_target():
    """The entry's check (a) and (b), ResNet-20 on 1,280 Fashion-MNIST images, 3 + 2 epochs, target macs=0.5.

    Calibrated by ``nice python benchmarks/dmcp_check.py --seeds 0 --train 1280``: expected MACs 0.5037 after
    stage 2 (at 640 images, 40 alpha steps, 0.5389: not yet within 5%; see docs/methods-search-5.md)."""
    from benchmarks.dmcp_check import one

    r = one(0, 1280, 5, 0.5, 32)
    assert r["engaged"] is True and r["telemetry"]["alpha_steps"] == 80
    assert r["expected_within_5pct"] and r["marginals_non_increasing"]
    assert r["telemetry"]["cut_cost"] <= 0.5
