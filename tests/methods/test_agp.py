import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.masks import get_masks
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.agp import agp_callback
from prunekit.train import TrainConfig


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20 * 8, 10, generator=g)
    return [(x[i:i + 8], (x[i:i + 8, 0] > 0).long()) for i in range(0, len(x), 8)]


def test_agp_ramps_over_the_configured_window_and_masks_only_grow():
    load_all()
    model = nn.Sequential(nn.Linear(10, 30), nn.ReLU(), nn.Linear(30, 2))
    seen = []
    orig = get_method("agp").run
    ctx = RunContext(model=model, example_inputs=None, target="sparsity=0.9", train_data=data(), prune_epochs=2,
                     options={"frequency": 4, "ramp": (0.0, 0.6)},
                     train_config=TrainConfig(epochs=1, lr=0.05, progress=False))
    res = orig(ctx)
    events = res.info["events"]
    steps = [s for s, _ in events]
    assert steps == [4, 8, 12, 16, 20, 24]  # 40 steps, ramp over the first 24 in 6 events of 4 steps
    sp = [s for _, s in events]
    assert all(b > a for a, b in zip(sp, sp[1:])) and sp[-1] == pytest.approx(0.9, abs=2e-3)
    incs = [b - a for a, b in zip(sp, sp[1:])]
    assert all(b <= a + 2e-3 for a, b in zip(incs, incs[1:]))  # cubic: increments shrink
    for fqn, m in get_masks(model).items():
        assert 1 - m.float().mean().item() == pytest.approx(0.9, abs=1e-3)


def test_agp_callback_rejects_bad_ramp():
    with pytest.raises(ConfigError, match=r"ramp=\(0.5, 0.2\)"):
        agp_callback(final=0.5, total_steps=100, ramp=(0.5, 0.2))
