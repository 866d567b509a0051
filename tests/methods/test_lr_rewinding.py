import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.masks.workflows import retrain_lr_rewinding
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.lr_rewinding import rounds_for
from prunekit.schedules import LRReplay
from prunekit.train import TrainConfig, lr_factor


def data(n=4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n * 8, 6, generator=g)
    return [(x[i:i + 8], (x[i:i + 8, 0] > 0).long()) for i in range(0, len(x), 8)]


def test_retraining_replays_exactly_the_last_t_epochs_of_the_schedule():
    original = TrainConfig(epochs=6, lr=0.1, scheduler="step", lr_milestones=(4 / 6,), lr_gamma=0.1, progress=False)
    res = retrain_lr_rewinding(nn.Linear(6, 2), data(), original, retrain_epochs=3)
    # 4 batches per epoch: T = 24 steps, the replay covers steps 12..23
    expected = [0.1 * lr_factor(s, 24, original) for s in range(12, 24)]
    assert expected[:4] == pytest.approx([0.1] * 4) and expected[4:] == pytest.approx([0.01] * 8)
    assert res.steps == 12
    cb = [LRReplay(lambda s: lr_factor(s + 12, 24, original), 0.1)]
    from prunekit.train import fit
    fit(nn.Linear(6, 2), data(), original.replace(epochs=3, scheduler="constant"), callbacks=cb)
    assert cb[0].lrs == pytest.approx(expected)


def test_rounds_and_bad_options():
    assert rounds_for(0.9, 0.2)[-1] == 0.9 and len(rounds_for(0.9, 0.2)) == 11
    load_all()
    ctx = RunContext(model=nn.Linear(6, 2), example_inputs=None, target="sparsity=0.5", train_data=data(),
                     options={"retrain_epochs": 3, "original_epochs": 2})
    with pytest.raises(ConfigError, match="retrain_epochs=3 > original_epochs=2"):
        get_method("lr-rewinding").run(ctx)
