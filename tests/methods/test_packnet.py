"""PackNet: task A bit-identical after task B is packed, the per-layer magnitude release, ownership, save/load.

PackNet has its own contract (not tests/masks/test_method_contract.py): it frees weights for later tasks instead
of masking them, and never prunes the per-task head.
"""
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.masks.tasks import PackedNetwork, load_packed_network, save_packed_network
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.packnet import FreezeOwned, release_smallest_
from prunekit.train import fit

load_all()


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 2))


def task(seed, col):
    """Label = sign of input ``col``: two tasks read different inputs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 6, generator=g)
    y = (x[:, col] > 0).long()
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]


def pack(model, data, sparsity="0.5", epochs=2, **options):
    ctx = RunContext(model=model, example_inputs=data[0][0][:2], target=f"sparsity={sparsity}", train_data=data,
                     prune_epochs=epochs, options={"retrain_epochs": 1, **options},
                     train_config=pk.TrainConfig(lr=0.1, scheduler="constant", progress=False))
    return get_method("packnet").run(ctx)


def accuracy(model, data):
    with torch.no_grad():
        return sum(int((model(x).argmax(1) == y).sum()) for x, y in data) / sum(len(y) for _, y in data)


def test_release_frees_the_smallest_half_of_the_task_weights_in_every_layer():
    net = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.3, -0.1, 2.0], [-0.5, 0.05, 1.0]]))
    packed = PackedNetwork(net, head="2")
    packed.claim_free_(1)
    assert release_smallest_(packed, 1, 0.5) == 3
    assert packed.owners["0.weight"].tolist() == [[0, 0, 1], [1, 0, 1]]  # |0.05|, |0.1|, |0.3| freed
    assert net[0].weight.tolist() == [[0.0, 0.0, 2.0], [-0.5, 0.0, 1.0]]


def test_task_a_is_bit_identical_after_task_b_is_packed_and_both_tasks_learn():
    a, b = task(0, 0), task(1, 1)
    packed = PackedNetwork(mlp(), head="4")
    res_a = pack(packed, a, epochs=10)
    assert res_a.engaged is True and res_a.telemetry["task"] == 1
    packed.task = 1
    packed.eval()
    logits_a = torch.cat([packed(x) for x, _ in a]).detach()
    assert accuracy(packed, a) >= 0.9
    res_b = pack(packed, b, epochs=10, classes=2)
    assert res_b.engaged is True and res_b.telemetry["task"] == 2 and res_b.telemetry["earlier_tasks_changed"] == 0
    packed.task = 1
    packed.eval()
    assert torch.equal(torch.cat([packed(x) for x, _ in a]), logits_a)  # max-abs difference exactly 0
    packed.task = 2
    assert accuracy(packed, b) >= 0.9
    # ownership: nested task masks, disjoint own sets, B only in weights A's pruning freed
    own = packed.owners
    n = sum(o.numel() for o in own.values())
    counts = [sum(int((o == k).sum()) for o in own.values()) for k in (0, 1, 2)]
    assert counts[1] == n // 2 and counts[2] == n // 4 and sum(counts) == n


def test_plain_fine_tuning_on_task_b_changes_task_a_which_packnet_prevents():
    a, b = task(0, 0), task(1, 1)
    packed = PackedNetwork(mlp(), head="4")
    pack(packed, a)
    packed.task = 1
    packed.eval()
    logits_a = torch.cat([packed(x) for x, _ in a]).detach()
    packed.new_task(2)
    packed.claim_free_(2)
    # the same training of task B without PackNet's freezing moves task A's weights
    fit(packed, b, pk.TrainConfig(lr=0.1, progress=False))
    packed.task = 1
    packed.eval()
    assert not torch.equal(torch.cat([packed(x) for x, _ in a]), logits_a)


def test_a_plain_model_is_task_one_left_with_its_released_weights_at_zero_and_kept_zero_in_a_fine_tune():
    model = mlp()
    res = pack(model, task(0, 0))
    w = [model[i].weight for i in (0, 2)]
    assert all(int((x == 0).sum()) == x.numel() // 2 for x in w) and int((model[4].weight == 0).sum()) == 0
    assert isinstance(res.callbacks[0], FreezeOwned)
    fit(model, task(2, 0), pk.TrainConfig(lr=0.1, progress=False), callbacks=res.callbacks)
    assert all(int((x == 0).sum()) >= x.numel() // 2 for x in w)


def test_nothing_released_warns_with_the_knob_and_save_load_keeps_each_task(tmp_path):
    packed = PackedNetwork(mlp(), head="4")
    with pytest.warns(MechanismWarning, match="raise the target sparsity"):
        res = pack(packed, task(0, 0), sparsity="0.0")
    assert res.engaged is False and res.telemetry["released"] == 0
    with pytest.warns(MechanismWarning):  # task 2 claims nothing (none free), trains its head only
        pack(packed, task(1, 1), sparsity="0.5")
    x = task(3, 0)[0][0]
    packed.eval()
    outs = {}
    for k in (1, 2):
        packed.task = k
        outs[k] = packed(x).detach()
    back = load_packed_network(save_packed_network(packed, tmp_path / "p.safetensors"), mlp)
    back.eval()
    for k in (1, 2):
        back.task = k
        assert torch.equal(back(x), outs[k])


def test_a_model_without_a_linear_head_is_refused_and_left_unchanged():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = [(torch.randn(4, 1, 5, 5), torch.randint(0, 2, (4,)))]
    with pytest.raises(ConfigError, match="found no Linear layer"):
        pack(model, data)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
