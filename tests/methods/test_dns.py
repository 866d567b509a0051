import pytest
import torch
from torch import nn

from prunekit.masks import get_masks, mask_modes
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.dns import dns_thresholds, hysteresis_mask
from prunekit.train import TrainConfig


def test_hysteresis_rule_on_a_hand_made_tensor():
    w = torch.tensor([[0.05, 0.095, 0.105, 0.3], [-0.05, -0.095, -0.105, -0.3]])
    m = torch.tensor([[True, True, True, True], [False, False, False, False]])
    out = hysteresis_mask(w, m, 0.1)
    # kept: cut only at |w| <= 0.09; pruned: spliced only at |w| > 0.11; the band in between keeps its state
    assert out.tolist() == [[False, True, True, True], [False, False, False, True]]


def test_thresholds_hit_the_first_cut():
    p = {"w": torch.randn(1000, generator=torch.Generator().manual_seed(0))}
    t = dns_thresholds(p, 0.8)["w"]
    assert float((p["w"].abs() <= 0.9 * t).float().mean()) == pytest.approx(0.8, abs=0.002)


def test_dns_splices_and_ends_with_frozen_hard_masks():
    load_all()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30 * 16, 12, generator=g)
    data = [(x[i:i + 16], (x[i:i + 16, :3].argmax(1))) for i in range(0, len(x), 16)]
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 3))
    ctx = RunContext(model=model, example_inputs=None, target="sparsity=0.8", train_data=data, prune_epochs=2,
                     options={"gamma": 0.0}, train_config=TrainConfig(epochs=1, lr=0.2, progress=False))
    res = get_method("dns").run(ctx)
    assert res.info["splices"] >= 1 and res.info["mask_updates"] > 10
    assert set(mask_modes(model).values()) == {"hard"}
    assert res.info["sparsity"] == pytest.approx(0.8, abs=1e-3)
