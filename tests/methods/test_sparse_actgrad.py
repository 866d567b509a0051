"""sparse-actgrad (Ye et al. ECCV 2020) as a method: trains with pruned activation gradients, removes nothing."""
import pytest
import torch
from torch import nn
from method_setups import conv_batches, conv_ctx, tiny_convnet

from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods import RunContext, get_method, load_all

load_all()


def test_trains_with_sparse_conv_output_gradients_and_keeps_the_architecture():
    model, data = tiny_convnet(), conv_batches(4)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = get_method("sparse-actgrad").run(conv_ctx(model, data))
    t = res.telemetry
    assert res.engaged is True and t["steps"] == 4 and t["pruned_fraction"] > 0.3 and t["zero_fraction"] >= t["pruned_fraction"]
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes  # nothing removed
    assert not torch.equal(before["0.weight"], model.state_dict()["0.weight"])  # it trained
    assert not any(m._forward_hooks for m in model.modules())  # hooks gone after training


def test_p_zero_prunes_nothing_and_warns_naming_p():
    model, data = tiny_convnet(), conv_batches(2)
    with pytest.warns(MechanismWarning, match=r"raise options.p"):
        res = get_method("sparse-actgrad").run(conv_ctx(model, data, options={"p": 0.0}))
    assert res.engaged is False and res.telemetry["pruned_fraction"] == 0


def test_model_without_conv_is_refused_and_left_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = RunContext(model=model, example_inputs=torch.randn(2, 1, 6, 6), target="macs=0.5",
                     train_data=conv_batches(1), prune_epochs=1)
    with pytest.raises(ConfigError, match="model=Sequential: sparse-actgrad prunes the output gradients of Conv2d"):
        get_method("sparse-actgrad").run(ctx)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match=r"prune_epochs=0"):
        get_method("sparse-actgrad").run(conv_ctx(tiny_convnet(), conv_batches(1), prune_epochs=0))
