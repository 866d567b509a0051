import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.masks import get_masks
from prunekit.methods import RunContext, get_method, load_all


def test_weights_on_always_zero_pixels_are_pruned_first():
    load_all()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(32, 20)
    x[:, :10] = 0  # half the pixels are zero in every image: their first-layer weights score exactly 0
    ctx = RunContext(model=model, example_inputs=x[:1], target="sparsity=0.5", calib=[(x, torch.randint(0, 4, (32,)))])
    res = get_method("snip").run(ctx)
    m = get_masks(model)["0.weight"]
    assert int(m[:, :10].sum()) == 0
    assert res.info["sparsity"] == pytest.approx(0.5, abs=1 / 384)


def test_snip_needs_calibration_batches():
    load_all()
    ctx = RunContext(model=nn.Linear(3, 2), example_inputs=None, target="sparsity=0.5")
    with pytest.raises(ConfigError, match="pass calib="):
        get_method("snip").run(ctx)
