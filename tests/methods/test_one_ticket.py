import torch
from torch import nn

from prunekit.errors import CheckpointError
from prunekit.masks import get_masks
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.one_ticket import transfer_ticket_
from prunekit.train import TrainConfig

import pytest


def net(classes):
    return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, classes))


def data(classes):
    g = torch.Generator().manual_seed(classes)
    x = torch.randn(64, 10, generator=g)
    return [(x[i:i + 16], x[i:i + 16, :classes].argmax(1)) for i in range(0, 64, 16)]


def test_ticket_saved_on_a_source_transfers_to_a_target_with_a_new_head(tmp_path):
    load_all()
    torch.manual_seed(0)
    source = net(3)
    path = tmp_path / "ticket.safetensors"
    ctx = RunContext(model=source, example_inputs=None, target="sparsity=0.7", train_data=data(3),
                     options={"rounds": 2, "save_to": str(path)},
                     train_config=TrainConfig(epochs=1, lr=0.1, progress=False))
    info = get_method("one-ticket").run(ctx).info
    assert info["ticket"] == str(path)
    target = net(5)
    head_before = target[4].weight.detach().clone()
    ctx = RunContext(model=target, example_inputs=None, target="sparsity=0.7", options={"ticket": str(path)})
    get_method("one-ticket").run(ctx)
    masks, src_masks = get_masks(target), get_masks(source)
    assert sorted(masks) == ["0.weight", "2.weight"]  # the 5-way head is fresh and dense
    assert all(torch.equal(masks[k], src_masks[k]) for k in masks)
    torch.testing.assert_close(target[0].weight.detach(), source[0].weight.detach())
    torch.testing.assert_close(target[4].weight.detach(), head_before)
    with pytest.raises(CheckpointError, match="no ticket file at path="):
        transfer_ticket_(net(5), tmp_path / "nope.safetensors")
