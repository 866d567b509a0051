import numpy as np
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.train.rounds import prune_in_rounds


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))


class Counting:
    """A list of batches that counts how many it handed out."""

    def __init__(self, batches):
        self.batches, self.served = batches, 0

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for b in self.batches:
            self.served += 1
            yield b


def _by_width(graph, mine):
    # group 0 = the first layer's outputs, 1 = the second's: raw scores 10..15 and 0.1..0.6
    return [np.asarray(mine[i], float) for i in range(len(graph.groups))]


def test_ranks_raw_scores_across_layers_without_normalising():
    # every channel of layer 2 scores below every channel of layer 1: a global ranking of the raw values
    # takes layer 2's first. Normalised per layer (the engine's global allocation) both layers look alike
    # and the lowest of each would go.
    model, x = _mlp(), torch.randn(3, 4)
    scores = {0: np.arange(10, 16), 1: np.arange(1, 7) / 10}
    r = prune_in_rounds(model, x, target="params=0.85", score=lambda m, g: _by_width(g, scores), per_round=2,
                        max_rounds=1)
    assert r.rounds == 1 and model[0].out_features == 6 and model[2].out_features < 6
    assert r.cost_after <= 0.85 * r.cost_before
    assert r.cost_after == pk.measure(model, x).params


def test_trains_steps_between_each_cut_through_fit_and_lands_on_target():
    model, x = _mlp(), torch.randn(3, 4)
    data = Counting([(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(2)])
    scores = lambda m, g: [np.arange(gr.width, dtype=float) for gr in g.groups]  # noqa: E731
    before = model[4].weight.detach().clone()
    r = prune_in_rounds(model, x, target="params=0.5", score=scores, per_round=1, max_rounds=8, train_data=data,
                        steps_between=3)
    assert r.per_round == 1 and r.rounds >= 3 and set(r.removed) == {1}
    assert r.train_steps == 3 * (r.rounds - 1) == data.served  # 3 steps per gap, cycling the 2 batches
    assert r.cost_after <= 0.5 * r.cost_before and r.cost_after == pk.measure(model, x).params
    assert not torch.equal(before, model[4].weight.detach())  # the head (never cut) was trained
    assert r.kept_history == sorted(r.kept_history, reverse=True)


def test_one_round_trains_nothing_and_says_so():
    model, x = _mlp(), torch.randn(3, 4)
    data = Counting([(torch.randn(8, 4), torch.randint(0, 2, (8,)))])
    scores = lambda m, g: [np.arange(gr.width, dtype=float) for gr in g.groups]  # noqa: E731
    r = prune_in_rounds(model, x, target="params=0.7", score=scores, per_round=50, max_rounds=4, train_data=data,
                        steps_between=5)
    assert r.rounds == 1 and r.train_steps == 0 and data.served == 0


def test_unreachable_target_is_refused_before_any_change():
    model, x = _mlp(), torch.randn(3, 4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="cannot be reached"):
        prune_in_rounds(model, x, target="params=0.001", score=lambda m, g: [], per_round=1, max_rounds=2)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
