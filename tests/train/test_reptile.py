"""The Reptile loop: the outer update computed by hand on two toy tasks, annealing, callbacks and masks."""
import pytest
import torch
from torch import nn

from prunekit.data.episodes import Episode, EpisodeSampler
from prunekit.masks import install_masks_
from prunekit.train import Callback
from prunekit.train.reptile import Reptile, meta_step_size


def _task(x, y):
    x, y = torch.tensor([[x]]), torch.tensor([y])
    return Episode(x, y, x[:0], y[:0], (y.item(),))


def test_outer_update_on_two_toy_tasks_matches_the_hand_computation():
    # theta = W = 0 (2 logits, 1 input). Task 1: x = 1, label 0; task 2: x = 2, label 1. At W = 0 the softmax is
    # (1/2, 1/2), so dCE/dlogits = p - onehot: task 1 (-1/2, 1/2) * x = (-0.5, 0.5); task 2 (1/2, -1/2) * 2 = (1, -1).
    # One SGD step at lr 0.1: phi1 = (0.05, -0.05), phi2 = (-0.1, 0.1); mean (-0.025, 0.025);
    # theta' = theta + 0.5 (mean - theta) = (-0.0125, 0.0125).
    net = nn.Linear(1, 2, bias=False)
    nn.init.zeros_(net.weight)
    r = Reptile(net, ways=2, inner_steps=1, inner_batch=1, inner_lr=0.1, optimizer="sgd")
    moved = r.meta_step([_task(1.0, 0), _task(2.0, 1)], epsilon=0.5)
    torch.testing.assert_close(net.weight.detach(), torch.tensor([[-0.0125], [0.0125]]))
    assert abs(moved - (0.05 * 2 ** 0.5 + 0.1 * 2 ** 0.5) / 2) < 1e-6  # mean ||phi_i - theta||


def test_two_inner_steps_follow_the_softmax_gradient_and_epsilon_one_lands_on_the_mean():
    # task 1 twice: step 2 starts at (0.05, -0.05): p0 = sigmoid(0.1), grad = (p0 - 1, 1 - p0)
    net = nn.Linear(1, 2, bias=False)
    nn.init.zeros_(net.weight)
    r = Reptile(net, ways=2, inner_steps=2, inner_batch=1, inner_lr=0.1, optimizer="sgd")
    r.meta_step([_task(1.0, 0)], epsilon=1.0)
    step2 = 0.1 * (1 - torch.sigmoid(torch.tensor(0.1)))
    torch.testing.assert_close(net.weight.detach().flatten(), torch.stack([0.05 + step2, -0.05 - step2]))


def test_epsilon_is_annealed_linearly_as_in_the_reference():
    assert [meta_step_size(i, 5, 1.0, 0.0) for i in range(5)] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    assert meta_step_size(2, 4, 0.5, 0.5) == 0.5


class _Count(Callback):
    def __init__(self):
        self.epochs, self.steps, self.ends = [], 0, 0

    def on_epoch_start(self, state):
        self.epochs.append(state.epoch)

    def on_after_step(self, state):
        self.steps += 1

    def on_train_end(self, state):
        self.ends += 1


def test_callbacks_see_meta_iterations_as_epochs_and_inner_steps_as_steps():
    torch.manual_seed(0)
    x, y = torch.randn(40, 3), torch.arange(4).repeat(10)
    cb = _Count()
    r = Reptile(nn.Linear(3, 4), ways=2, inner_steps=3, inner_batch=2, callbacks=[cb])
    hist = r.train(EpisodeSampler(x, y, range(4), ways=2), iterations=4, meta_batch=2, shots=2)
    r.end()
    assert cb.epochs == [0, 1, 2, 3] and cb.steps == 4 * 2 * 3 and cb.ends == 1
    assert [h["epsilon"] for h in hist] == [1.0, 0.75, 0.5, 0.25]


def test_masked_weights_stay_exactly_zero_through_inner_and_outer_updates():
    torch.manual_seed(0)
    x, y = torch.randn(40, 3), torch.arange(4).repeat(10)
    net = nn.Linear(3, 4)
    mask = torch.rand(4, 3) > 0.5
    install_masks_(net, {"weight": mask})
    r = Reptile(net, ways=2, inner_steps=4, inner_batch=2, inner_lr=0.05)
    r.train(EpisodeSampler(x, y, range(4), ways=2), iterations=3, meta_batch=2, shots=3)
    assert torch.all(net.weight[~mask] == 0) and torch.all(net.weight[mask] != 0)


def test_evaluation_restores_the_model_and_the_optimizer_state():
    torch.manual_seed(0)
    x, y = torch.randn(40, 3), torch.arange(4).repeat(10)
    net = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Linear(8, 4))
    r = Reptile(net, ways=2, inner_steps=2, inner_batch=2)
    sampler = EpisodeSampler(x, y, range(4), ways=2)
    r.train(sampler, iterations=2, meta_batch=1, shots=2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt_before = {k: v["exp_avg_sq"].clone() for k, v in r.state.optimizer.state.items()}
    acc = r.few_shot_accuracy(sampler, episodes=3, shots=2, queries=2, steps=5, batch=2)
    assert 0.0 <= acc <= 1.0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(torch.equal(opt_before[k], v["exp_avg_sq"]) for k, v in r.state.optimizer.state.items())
