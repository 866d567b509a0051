"""hrank. Scaled check (entry hrank unit test): on the LeNet-5 baseline the average rank estimated from 2
batches agrees with 8 batches (Spearman >= 0.9), and at 50% of the MACs (fc2 kept, no fine-tuning)
the method removes exactly the conv1 maps of lowest average rank. Measured, not asserted (2026-11-30, the
calibration run of these tests): before fine-tuning HRank does worse than random selection on LeNet-5 --
at 50% of the MACs 69.9% vs 77.8% (random, mean of 3 seeds), and with conv1/conv2 at 50% each 46.5% vs
59.8% -- because nearly every 12x12 map is full rank and ties decide."""
import copy

import pytest
import torch
from scipy.stats import spearmanr
from test_l1_filter import lenet_setup, run_method

from prunekit.criteria.hrank import average_rank


@pytest.fixture(scope="module")
def lenet():
    return lenet_setup()


@pytest.mark.needs_fashion
def test_rank_stable_from_two_batches(lenet):
    model, _, _, bundle = lenet
    batches = bundle.calib(8, 32)
    with torch.no_grad():
        maps = torch.cat([model.relu1(model.conv1(x)) for x, _ in batches])  # [256, 20, 24, 24]
    few, many = average_rank(maps[:64]), average_rank(maps)
    assert spearmanr(few.numpy(), many.numpy())[0] >= 0.9


@pytest.mark.needs_fashion
def test_hrank_cuts_lowest_average_rank_maps(lenet):
    model, _, calib, _ = lenet
    m = copy.deepcopy(model)
    x = torch.cat([b[0] for b in calib])
    with torch.no_grad():
        ranks = average_rank(model.pool1(model.relu1(model.conv1(x)))[:128])  # what conv2 reads, 128 images
    run_method("hrank", m, calib, per_layer={"conv1": 0.5})
    kept_ranks = sorted(ranks.tolist())[10:]
    with torch.no_grad():
        new = average_rank(m.pool1(m.relu1(m.conv1(x)))[:128])
    assert m.conv1.out_channels == 10 and sorted(new.tolist()) == kept_ranks
