"""OICSR (Li et al., CVPR 2019): group lasso over out-in channels, global cut on the out-in energy."""
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.graph import build_graph
from prunekit.methods import get_method, load_all
from prunekit.methods._regularizers import ChannelGroupLasso, channel_group_norms, channel_slices

from method_setups import conv_batches, conv_ctx, tiny_convnet

load_all()


def _two_convs():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.ReLU(), nn.Conv2d(2, 3, 1, bias=False), nn.Flatten(1),
                      nn.Linear(3 * 4, 2))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([3.0, 1.0]).reshape(2, 1, 1, 1))
        m[2].weight.copy_(torch.tensor([[4.0, 0.0], [0.0, 2.0], [0.0, 1.0]]).reshape(3, 2, 1, 1))
    return m


def _group(m):
    g = build_graph(m, torch.randn(1, 1, 2, 2))
    return next(gr for gr in g.groups if any(mm.fqn == "0.weight" for mm in gr.members))


def test_the_out_in_group_norm_joins_the_filter_and_the_next_layers_column_by_hand():
    """Channel 0: filter 3, column (4, 0, 0) -> sqrt(9 + 16) = 5; channel 1: filter 1, column (0, 2, 1) ->
    sqrt(1 + 5) = sqrt(6). The filter group lasso alone sees 3 and 1."""
    m = _two_convs()
    g = _group(m)
    both = channel_group_norms(channel_slices(m, g), 2)
    alone = channel_group_norms(channel_slices(m, g, ("producer",)), 2)
    assert both.sqrt().tolist() == pytest.approx([5.0, 6 ** 0.5])
    assert alone.sqrt().tolist() == pytest.approx([3.0, 1.0])


def test_the_group_lasso_gradient_is_w_over_the_group_norm_on_both_halves():
    m = _two_convs()
    g = _group(m)
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    ChannelGroupLasso([(2, channel_slices(m, g))], strength=0.5).on_after_backward(None)
    assert m[0].weight.grad.flatten().tolist() == pytest.approx([0.5 * 3 / 5, 0.5 * 1 / 6 ** 0.5])
    col = m[2].weight.grad.reshape(3, 2)
    assert col[:, 0].tolist() == pytest.approx([0.5 * 4 / 5, 0, 0])
    assert col[:, 1].tolist() == pytest.approx([0, 0.5 * 2 / 6 ** 0.5, 0.5 * 1 / 6 ** 0.5])
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    ChannelGroupLasso([(2, channel_slices(m, g, ("producer",)))], strength=0.5).on_after_backward(None)
    assert m[2].weight.grad.abs().sum() == 0  # the separate (filter-only) lasso leaves the next layer alone
    assert m[0].weight.grad.flatten().tolist() == pytest.approx([0.5, 0.5])


def test_training_concentrates_the_energy_and_the_cut_meets_the_target():
    m = tiny_convnet()
    data = conv_batches(6, labels="tercile")
    res = get_method("oicsr").run(conv_ctx(m, data, options={"strength": 0.2}))  # share 0.37 -> 0.28 when set
    t = res.telemetry
    assert res.engaged is True and t["bottom_half_share"] < t["bottom_half_share_before"]
    assert res.info["kept_macs_fraction"] <= 0.5 and 0 < t["energy_removed_share"] < 0.5


def test_a_strength_of_zero_does_not_engage_and_warns():
    m = tiny_convnet()
    data = conv_batches(6, labels="tercile")
    ctx = conv_ctx(m, data, options={"strength": 0.0},
                   train_config=pk.TrainConfig(lr=1e-9, weight_decay=0.0, scheduler="constant", progress=False))
    with pytest.warns(MechanismWarning, match="options.strength"):
        res = get_method("oicsr").run(ctx)
    assert res.engaged is False


def test_bad_input_leaves_the_model_as_it_was():
    m = tiny_convnet()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    data = conv_batches(2)
    with pytest.raises(ConfigError, match="strength"):
        get_method("oicsr").run(conv_ctx(m, data, options={"strength": -1.0}))
    with pytest.raises(ConfigError, match="prune_epochs"):
        get_method("oicsr").run(conv_ctx(m, data, prune_epochs=0))
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())
