"""The expected cost of soft channel masks: the engine's exact cost at 0/1 masks, differentiable in between."""
import numpy as np
import pytest
import torch
from torch import nn

from prunekit.graph import build_graph
from prunekit.graph.expected_cost import expected_cost


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1),
                         nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))


@pytest.mark.parametrize("kind", ["macs", "params"])
def test_at_binary_masks_it_equals_the_engines_exact_cost(kind):
    g = build_graph(_net(), torch.randn(1, 2, 5, 5))
    rng = np.random.default_rng(0)
    for _ in range(5):
        keep, removal = {}, {}
        for grp in g.groups:
            k = rng.random(grp.width) > 0.4
            k[0] = True
            keep[grp.id] = torch.tensor(k, dtype=torch.float64)
            removal[grp.id] = np.nonzero(~k)[0]
        exact = (g.macs if kind == "macs" else g.params)(g.removed_flat(removal))
        assert float(expected_cost(g, keep, kind)) == exact


def test_it_is_bilinear_in_the_keep_probabilities_of_two_chained_layers_by_hand():
    m = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False))
    g = build_graph(m, torch.randn(1, 3))
    p = torch.tensor([1.0, 0.5, 0.5, 0.0], dtype=torch.float64, requires_grad=True)
    cost = expected_cost(g, {g.groups[0].id: p})
    assert cost.item() == 3 * 2.0 + 2.0 * 2  # first layer 3 x E[active], second E[active] x 2
    cost.backward()
    assert p.grad.tolist() == [5.0] * 4  # d/dp_c = 3 + 2
