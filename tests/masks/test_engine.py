import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import CheckpointError, ConfigError
from prunekit.masks import (apply_masks_, get_masks, install_masks_, load_masks_, masks_from_zeros_,
                            remove_masks_, save_masks, update_masks_)


def mlp():
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))


def convnet():
    return nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True),
    lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3),
    lambda p: torch.optim.AdamW(p, lr=1e-2),
    lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.5),
])
def test_pruned_weights_stay_exactly_zero_in_a_plain_loop_with_any_optimizer(make_opt):
    model = mlp()
    # optimizer created *before* pruning, with momentum/Adam state for every weight
    opt = make_opt(model.parameters())
    for _ in range(2):
        opt.zero_grad(); model(torch.randn(8, 12)).pow(2).mean().backward(); opt.step()
    pk.sparsify_(model, sparsity=0.8)
    masks = {k: v.clone() for k, v in get_masks(model).items()}
    for _ in range(5):
        opt.zero_grad()
        out = model(torch.randn(8, 12))
        # the forward always sees masked weights, whatever the optimizer state did
        assert all(int((model.get_parameter(k)[~m] != 0).sum()) == 0 for k, m in masks.items())
        out.pow(2).mean().backward()
        # hard mode: pruned gradients are zero so no optimizer state is fed
        assert all(float(model.get_parameter(k).grad[~m].abs().sum()) == 0 for k, m in masks.items())
        opt.step()
    sd = model.state_dict()
    assert all(int((sd[k][~m] != 0).sum()) == 0 for k, m in masks.items())
    # surviving weights did train
    assert all(int((model.get_parameter(k)[m] != 0).sum()) == int(m.sum()) for k, m in masks.items())


def test_stale_momentum_is_cleared_and_direct_edits_are_undone_before_the_next_forward():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(3):
        opt.zero_grad(); model(torch.randn(4, 12)).sum().backward(); opt.step()
    pk.sparsify_(model, sparsity=0.5)
    mask = get_masks(model)["0.weight"].clone()
    assert float(opt.state[model[0].weight]["momentum_buffer"][~mask].abs().sum()) > 0  # stale momentum
    opt.zero_grad(); model(torch.randn(4, 12)).sum().backward(); opt.step()
    # the global step hook re-masks the stepped weights and clears their momentum at pruned entries
    assert int((model[0].weight.detach()[~mask] != 0).sum()) == 0
    assert float(opt.state[model[0].weight]["momentum_buffer"][~mask].abs().sum()) == 0
    with torch.no_grad():
        model[0].weight.add_(1.0)  # an edit no hook sees ...
    x = torch.randn(5, 12)
    ref = nn.functional.linear(x, model[0].weight.detach() * mask, model[0].bias.detach())
    torch.testing.assert_close(model[0](x), ref)  # ... is undone by the forward pre-hook
    assert int((model[0].weight.detach()[~mask] != 0).sum()) == 0


def test_finalize_leaves_plain_model_with_dense_keys_and_strict_load():
    model = convnet()
    dense_keys = list(model.state_dict())
    pk.sparsify_(model, sparsity=0.6)
    assert list(model.state_dict()) == dense_keys  # masks are non-persistent buffers
    x = torch.randn(2, 2, 4, 4)
    before = model(x)
    report = pk.finalize_(model)
    assert report.pruned == round(0.6 * (8 * 2 * 9)) + round(0.6 * 3 * 128)
    assert list(model.state_dict()) == dense_keys
    assert all(len(m._forward_pre_hooks) == 0 and len(m._state_dict_pre_hooks) == 0 for m in model.modules())
    assert [n for n, _ in model.named_buffers()] == []
    fresh = convnet()
    fresh.load_state_dict(model.state_dict(), strict=True)
    torch.testing.assert_close(fresh(x), before)


def test_install_validates_everything_and_leaves_the_model_unchanged():
    model = mlp()
    before = copy.deepcopy(model.state_dict())
    bad = {"0.weight": torch.ones(16, 12, dtype=torch.bool), "2.wieght": torch.ones(4, 16), "2.bias": torch.ones(3)}
    with pytest.raises(ConfigError, match=r"did you mean '2.weight'.*has shape \(3,\) but the parameter has shape"):
        install_masks_(model, bad)
    assert get_masks(model) == {}
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    with pytest.raises(ConfigError, match="unknown mask mode mode='sticky'.*Registered mask modes: feedback, hard"):
        install_masks_(model, {"0.weight": torch.ones(16, 12)}, mode="sticky")


def test_feedback_mode_forward_is_masked_but_pruned_weights_keep_learning_and_revive():
    torch.manual_seed(1)
    model = mlp()
    w0 = model[0].weight.detach().clone()
    mask = torch.rand(16, 12) > 0.5
    install_masks_(model, {"0.weight": mask}, mode="feedback")
    x = torch.randn(6, 12)
    torch.testing.assert_close(model[0](x), nn.functional.linear(x, w0 * mask, model[0].bias))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad(); model(x).pow(2).sum().backward()
    g = model[0].weight.grad.clone()
    assert float(g[~mask].abs().sum()) > 0  # straight-through: pruned weights get their gradient
    opt.step()
    update_masks_(model, {"0.weight": torch.ones(16, 12, dtype=torch.bool)})
    # revived weights resume from their own value minus the update
    torch.testing.assert_close(model[0].weight.detach(), w0 - 0.1 * g)
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_masks_survive_deepcopy_to_and_grad_hooks_follow_new_parameters():
    model = mlp()
    pk.sparsify_(model, sparsity=0.7)
    twin = copy.deepcopy(model)
    mask = get_masks(twin)["0.weight"]
    with torch.no_grad():
        twin[0].weight.fill_(1.0)
    twin(torch.randn(3, 12)).sum().backward()
    assert int((twin[0].weight.detach()[~mask] != 0).sum()) == 0
    assert float(twin[0].weight.grad[~mask].abs().sum()) == 0
    # the original is untouched by the copy's edits and its own hooks still work
    model(torch.randn(3, 12)).sum().backward()
    assert float(model[0].weight.grad[~get_masks(model)["0.weight"]].abs().sum()) == 0
    if torch.cuda.is_available():  # pragma: no cover - device path
        twin.cuda()
        assert get_masks(twin)["0.weight"].is_cuda


def test_state_dict_round_trip_with_mask_sidecar(tmp_path):
    model = mlp()
    pk.sparsify_(model, sparsity=0.9, global_=True)
    masks = {k: v.clone() for k, v in get_masks(model).items()}
    path = save_masks(model, tmp_path / "m.safetensors")
    other = mlp()
    other.load_state_dict(model.state_dict(), strict=True)
    assert load_masks_(other, path) == {k: "hard" for k in masks}
    assert all(torch.equal(get_masks(other)[k], masks[k]) for k in masks)
    x = torch.randn(3, 12)
    torch.testing.assert_close(other(x), model(x))
    with pytest.raises(CheckpointError, match="no mask file at path="):
        load_masks_(other, tmp_path / "missing.safetensors")


def test_masks_re_derived_from_zeros_of_a_finalized_checkpoint():
    model = mlp()
    pk.sparsify_(model, sparsity=0.5)
    masks = {k: v.clone() for k, v in get_masks(model).items()}
    pk.finalize_(model)
    other = mlp()
    other.load_state_dict(model.state_dict())
    masks_from_zeros_(other, masks)
    assert all(torch.equal(get_masks(other)[k], masks[k]) for k in masks)


def test_load_state_dict_rewinds_weights_under_the_mask():
    model = mlp()
    init = copy.deepcopy(model.state_dict())
    pk.sparsify_(model, sparsity=0.5)
    mask = get_masks(model)["0.weight"].clone()
    model.load_state_dict(init)  # LTH rewind: dense values in, masked values kept
    torch.testing.assert_close(model[0].weight.detach(), init["0.weight"] * mask)


def test_remove_and_apply_report_counts():
    model = mlp()
    pk.sparsify_(model, sparsity=0.5)
    assert apply_masks_(model) == 2
    assert remove_masks_(model, ["2.weight"]) == ["2.weight"]
    assert list(get_masks(model)) == ["0.weight"]
