import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.masks import get_masks
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.han_magnitude import std_scaled_scores, std_threshold_mask


def test_threshold_rule_q1_prunes_68_percent_of_gaussian_weights():
    w = torch.randn(200_000, generator=torch.Generator().manual_seed(0)) * 0.05
    pruned = 1 - std_threshold_mask(w, 1.0).float().mean().item()
    assert pruned == pytest.approx(0.6827, abs=0.01)
    with pytest.raises(ConfigError, match="quality=-1"):
        std_threshold_mask(w, -1)


def test_std_scores_give_wide_layers_larger_cuts():
    model = nn.Sequential(nn.Linear(50, 50, bias=False), nn.Linear(50, 50, bias=False))
    with torch.no_grad():
        model[0].weight.normal_(0, 1.0)
        model[1].weight.normal_(0, 0.1)
    s = std_scaled_scores(model)
    # scaled by sigma, both layers rank alike: a shared q prunes about the same fraction of each
    load_all()
    ctx = RunContext(model=model, example_inputs=None, target="sparsity=0.5", options={"rounds": 1})
    get_method("han-magnitude").run(ctx)
    fr = {k: 1 - m.float().mean().item() for k, m in get_masks(model).items()}
    assert fr["0.weight"] == pytest.approx(0.5, abs=0.06) and fr["1.weight"] == pytest.approx(0.5, abs=0.06)
    assert set(s) == {"0.weight", "1.weight"}


def test_rounds_need_training_data():
    load_all()
    ctx = RunContext(model=nn.Linear(4, 4), example_inputs=None, target="sparsity=0.5")
    with pytest.raises(ConfigError, match="needs train_data"):
        get_method("han-magnitude").run(ctx)
