import torch
from method_setups import separable_batches
from torch import nn

from prunekit.errors import CheckpointError, ConfigError, MechanismWarning
from prunekit.masks import get_masks
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.one_ticket import transfer_ticket_
from prunekit.train import TrainConfig

import pytest


def net(classes):
    return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, classes))


def data(classes):
    return separable_batches(4, 16, 10, classes, seed=classes)


def test_ticket_saved_on_a_source_transfers_to_a_target_with_a_new_head(tmp_path):
    load_all()
    torch.manual_seed(0)
    source = net(3)
    path = tmp_path / "ticket.safetensors"
    ctx = RunContext(model=source, example_inputs=None, target="sparsity=0.7", train_data=data(3),
                     prune_epochs=2, options={"rate": 0.5, "save_to": str(path)},
                     train_config=TrainConfig(epochs=1, lr=0.1, progress=False))
    info = get_method("one-ticket").run(ctx).info
    assert info["ticket"] == str(path)
    target = net(5)
    head_before = target[4].weight.detach().clone()
    ctx = RunContext(model=target, example_inputs=None, target="sparsity=0.7", options={"ticket": str(path)})
    res = get_method("one-ticket").run(ctx)
    assert res.engaged is True and res.telemetry["transferred"] is True and res.telemetry["rewound_to"] == 4
    masks, src_masks = get_masks(target), get_masks(source)
    assert sorted(masks) == ["0.weight", "2.weight"]  # the 5-way head is fresh and dense
    assert all(torch.equal(masks[k], src_masks[k]) for k in masks)
    torch.testing.assert_close(target[0].weight.detach(), source[0].weight.detach())
    torch.testing.assert_close(target[4].weight.detach(), head_before)
    with pytest.raises(CheckpointError, match="no ticket file at path="):
        transfer_ticket_(net(5), tmp_path / "nope.safetensors")
    with pytest.raises(ConfigError, match="needs train_data"):  # the search trains; the transfer above did not
        get_method("one-ticket").run(RunContext(model=net(3), example_inputs=None, target="sparsity=0.5"))


def test_the_default_search_rewinds_late_to_the_end_of_the_first_epoch():
    """Morcos et al. generate tickets with late resetting: the default rewind point is an early step, not 0."""
    load_all()
    torch.manual_seed(0)
    model = net(3)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = RunContext(model=model, example_inputs=None, target="sparsity=0.5", train_data=data(3), prune_epochs=2,
                     train_config=TrainConfig(epochs=1, lr=0.1, progress=False))
    res = get_method("one-ticket").run(ctx)
    assert res.info["rewind_step"] == 4 and res.telemetry["rewound_to"] == 4  # 4 batches: the end of epoch 1
    assert res.engaged is True and res.telemetry["round_steps"] == 8
    m = get_masks(model)["0.weight"]
    assert not torch.allclose(model[0].weight.detach()[m], init["0.weight"][m])  # not the initial values


def test_rewinding_to_the_initialisation_is_not_late_resetting_and_warns():
    load_all()
    torch.manual_seed(0)
    ctx = RunContext(model=net(3), example_inputs=None, target="sparsity=0.5", train_data=data(3), prune_epochs=2,
                     options={"rewind_epochs": 0}, train_config=TrainConfig(epochs=1, lr=0.1, progress=False))
    with pytest.warns(MechanismWarning, match="set options.rewind_epochs above 0"):
        res = get_method("one-ticket").run(ctx)
    assert res.engaged is False and res.telemetry["rewound_to"] == 0
