"""fisher-obd (C-OBD, EigenDamage's baseline): w^2 times the squared batch gradients, by hand and through a plan."""
import numpy as np
import torch
from torch import nn

import prunekit as pk
from prunekit.criteria import ChannelView, get_criterion
from prunekit.criteria.collect import sampled_label_loss


def test_score_is_weight_squared_times_the_summed_squared_batch_gradients():
    w = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    g1, g2 = torch.tensor([[0.1, 0.2], [1.0, 3.0]]), torch.tensor([[0.3, 0.0], [-1.0, 1.0]])
    v = ChannelView("w", 0, "producer", np.arange(2), w, grad_batches=[g1, g2])
    # row 0: 1 * (0.01 + 0.09) + 4 * (0.04 + 0) = 0.26; row 1: 0.25 * (1 + 1) + 0 = 0.5
    assert np.allclose(get_criterion("fisher-obd").fn(v).tolist(), [0.26, 0.5])
    # a large weight on a flat direction loses to a small one on a curved direction (magnitude would not)
    assert get_criterion("l1").fn(v).tolist() == [3.0, 0.5]
    assert int(np.argmax(get_criterion("fisher-obd").fn(v).numpy())) == 1


def test_plans_to_the_target_with_the_true_fisher_loss():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    calib = [(torch.randn(16, 6), torch.randint(0, 3, (16,))) for _ in range(3)]
    p = pk.plan(m, calib[0][0][:1], target="params=0.6", criterion="fisher-obd", calib=calib, ignore=["2"],
                loss_fn=sampled_label_loss(torch.Generator().manual_seed(0)))
    assert p.predicted["params_after"] <= 0.6 * p.predicted["params_before"]
    assert p.predicted["params_after"] < p.predicted["params_before"]
