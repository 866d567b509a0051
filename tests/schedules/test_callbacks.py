from functools import partial

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.masks import get_masks, install_masks_
from prunekit.schedules import GradualPruning, LRReplay, MaskUpdate, RewindPoints, agp_cubic
from prunekit.train import TrainConfig, fit


def data(n_batches=8):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_batches * 16, 10, generator=g)
    y = (x[:, 0] > 0).long()
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, len(x), 16)]


def mlp():
    return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 2))


def test_gradual_pruning_follows_agp_in_fit_and_masks_hold():
    model = mlp()
    sched = partial(agp_cubic, final=0.8, start=0, n=4, frequency=3)
    cb = GradualPruning(sched)
    fit(model, data(), TrainConfig(epochs=2, lr=0.05, progress=False), callbacks=[cb])
    assert [s for s, _ in cb.history] == [3, 6, 9, 12]
    assert cb.history[-1][1] == pytest.approx(0.8, abs=1e-3)
    for fqn, m in get_masks(model).items():
        assert int((model.get_parameter(fqn)[~m] != 0).sum()) == 0
        assert 1 - m.float().mean().item() == pytest.approx(0.8, abs=0.01)


def test_rewind_points_store_exact_weights_and_refuse_unknown_steps():
    model = mlp()
    w0 = model[0].weight.detach().clone()
    cb = RewindPoints([0, 5])
    fit(model, data(), TrainConfig(epochs=1, lr=0.05, progress=False), callbacks=[cb])
    torch.testing.assert_close(cb.weights(0)["0.weight"], w0)
    assert sorted(cb.saved) == [0, 5]
    assert not torch.equal(cb.weights(5)["0.weight"], w0)
    with pytest.raises(ConfigError, match=r"rewind point step=7 was never saved \(saved steps: \[0, 5\]\)"):
        cb.weights(7)


def test_lr_replay_overrides_the_scheduler():
    model = mlp()
    seen = []

    class Spy(LRReplay):
        def on_after_backward(self, state):
            seen.append(state.optimizer.param_groups[0]["lr"])

    fit(model, data(4), TrainConfig(epochs=1, lr=1.0, scheduler="cosine", progress=False),
        callbacks=[Spy(lambda s: [0.5, 0.5, 0.05, 0.05][s], base_lr=0.2)])
    assert seen == pytest.approx([0.1, 0.1, 0.01, 0.01])


def test_mask_update_counts_splices():
    model = mlp()
    install_masks_(model, {"0.weight": torch.zeros(20, 10, dtype=torch.bool)}, mode="feedback")
    cb = MaskUpdate(lambda m, step: {"0.weight": torch.ones(20, 10, dtype=torch.bool)} if step == 2 else {})
    fit(model, data(4), TrainConfig(epochs=1, lr=0.05, progress=False), callbacks=[cb])
    assert cb.splices == 200 and cb.updates == 1
    assert bool(get_masks(model)["0.weight"].all())
