"""PackedNetwork: ownership, per-task masked inference, heads, and the safetensors round trip."""
import pytest
import torch
from torch import nn

from prunekit.errors import CheckpointError, ConfigError
from prunekit.masks.tasks import PackedNetwork, load_packed_network, save_packed_network


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


def test_a_task_computes_with_its_own_and_earlier_weights_only():
    packed = PackedNetwork(net(), head="2")
    assert packed.fqns == ["0.weight"]  # the head is never owned
    packed.claim_free_(1)
    chosen = torch.zeros(6, 4, dtype=torch.bool)
    chosen[:, :2] = True
    assert packed.release_(1, {"0.weight": chosen}) == 12
    assert float(packed.backbone[0].weight[:, :2].detach().abs().sum()) == 0
    packed.task = 1
    x = torch.randn(5, 4)
    before = packed(x).detach()
    assert packed.new_task(2) == 2 and packed.claim_free_(2) == 12
    with torch.no_grad():  # task 2 writes huge values into the freed weights
        packed.backbone[0].weight[:, :2] = 1e3
    packed.task = 1
    assert torch.equal(packed(x), before)  # task 1 never sees them
    packed.task = 2
    assert packed(x).shape == (5, 2)
    masks = [packed.task_mask(k)["0.weight"] for k in (1, 2)]
    assert bool((masks[0] <= masks[1]).all()) and int(masks[0].sum()) == 12 and int(masks[1].sum()) == 24


def test_releasing_a_weight_of_another_task_is_refused():
    packed = PackedNetwork(net(), head="2")
    packed.claim_free_(1)
    with pytest.raises(ConfigError, match="not owned by task 2"):
        packed.release_(2, {"0.weight": torch.ones(6, 4, dtype=torch.bool)})
    with pytest.raises(ConfigError, match="head='nope' is not a module"):
        PackedNetwork(net(), head="nope")


def test_save_and_load_keep_every_task_bit_exact(tmp_path):
    packed = PackedNetwork(net(), head="2")
    packed.claim_free_(1)
    packed.release_(1, {"0.weight": torch.rand(6, 4, generator=torch.Generator().manual_seed(0)) < 0.5})
    packed.new_task(5)
    packed.claim_free_(2)
    x = torch.randn(3, 4)
    outs = {}
    for k in (1, 2):
        packed.task = k
        outs[k] = packed(x).detach()
    path = save_packed_network(packed, tmp_path / "packed.safetensors")
    back = load_packed_network(path, net)
    assert back.num_tasks == 2 and back.task == 2
    for k in (1, 2):
        back.task = k
        assert torch.equal(back(x), outs[k])
        assert torch.equal(back.owners["0.weight"], packed.owners["0.weight"])
    from safetensors.torch import save_file
    save_file({"a": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="not a packed multi-task network"):
        load_packed_network(tmp_path / "plain.safetensors", net)
