"""Contract tests over the weight-pruning methods of this area: exact sparsity, masks hold in a plain loop,
determinism under a seed, finalize gives the dense keys, masks round-trip through a state_dict + sidecar."""
import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.masks import get_masks, load_masks_, save_masks
from prunekit.methods import METHODS, RunContext, get_method, load_all
from prunekit.train import TrainConfig

load_all()
# every registered unstructured method, computed from the registry: a newly registered one is in this contract
# without editing a list
UNSTRUCTURED = [m for m in METHODS.names() if get_method(m).kind == "unstructured"]
# options that keep a run on the tiny MLP cheap; a method missing here runs with its registered smoke options
FAST = {
    "han-magnitude": {"rounds": 2},
    "agp": {"frequency": 2},
    "lth": {"rate": 0.5, "output_rate": 0.5, "rewind_step": 1},
    "lr-rewinding": {"rate": 0.5},
    "one-ticket": {"rate": 0.5, "rewind_epochs": 0.5},
    "deep-compression": {"rounds": 2, "bits_fc": 3},
    "lap": {"rounds": 2},
    "dpf": {"frequency": 2},
    "autoprune": {"aux_lr": 0.015},  # the paper's rate (the smoke rate closes every gate of this MLP)
    "net-trim": {"steer": "epsilon", "iters": 60, "search_steps": 4},  # the paper's epsilon sets the sparsity;
    # the contract asks an exact target, which its epsilon search + top-up option gives
}
# methods whose paper only applies to layers this MLP does not have; each is refused with a clear error (tested
# below) and runs the contract of tests/methods/test_contract.py on a conv net instead
NEEDS_CONV = {"fddp": "DCT coefficients of k x k conv kernels"}
OWN_CONTRACT = {"packnet"}  # frees weights for later tasks (no masks) and never prunes its per-task head: test_packnet.py
OWN_CONTRACT.add("reptile-dsd")  # tasks need >= ways + held_out classes (here 3); 1st layer dense: test_reptile_dsd.py
OWN_CONTRACT |= {"magnitude-llm", "wanda", "sparsegpt"}  # decoder blocks of a language model, no MLP: test_wanda.py etc.
# the methods that meet the sparsity over all layers together (the others meet it in every layer)
GLOBAL = {"snip", "snip-ldi", "lr-rewinding", "one-ticket", "han-magnitude", "deep-compression",
          "dpf", "gsm", "proxsgd", "str", "lc", "net-trim", "rnn-jacobian", "sensitivity-reg", "autoprune",
          "constraint-aware", "energy-aware", "atmc"}  # atmc: one l0 projection over all layers (Gui et al. 2019)


def test_the_methods_are_computed_from_the_registry_and_hold_the_ones_this_contract_was_written_for():
    written_for = {"han-magnitude", "agp", "snip", "snip-ldi", "lth", "lr-rewinding", "one-ticket", "dns",
                   "deep-compression", "lap", "dpf", "gsm", "proxsgd", "str", "deconstruct-lt", "l-obs", "darb"}
    assert written_for <= set(UNSTRUCTURED)
    assert set(FAST) | GLOBAL <= set(UNSTRUCTURED), sorted((set(FAST) | GLOBAL) - set(UNSTRUCTURED))
    assert not {"l1-filter", "slimming"} & set(UNSTRUCTURED)


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 12), nn.ReLU(), nn.Linear(12, 3))


def batches(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n * 16, 16, generator=g)
    y = (x[:, :3].argmax(1))
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, len(x), 16)]


def run(method, sparsity=0.75, seed=0):
    load_all()
    torch.manual_seed(seed)
    model = mlp()
    data = batches()
    ctx = RunContext(model=model, example_inputs=data[0][0][:1], target=f"sparsity={sparsity}", train_data=data,
                     calib=data[:1], val_data=data[-1:], prune_epochs=1, seed=seed,
                     options=FAST.get(method, get_method(method).smoke),
                     train_config=TrainConfig(epochs=1, lr=0.05, progress=False))
    result = get_method(method).run(ctx)
    return result


@pytest.mark.parametrize("method", sorted(NEEDS_CONV))
def test_a_method_for_conv_kernels_refuses_the_mlp_clearly(method):
    with pytest.raises(ConfigError, match=NEEDS_CONV[method].split()[0]):
        run(method)


@pytest.mark.parametrize("method", [m for m in UNSTRUCTURED if m not in NEEDS_CONV and m not in OWN_CONTRACT])
def test_method_contract(method, tmp_path):
    result = run(method)
    model = result.model
    masks = {k: v.clone() for k, v in get_masks(model).items()}
    assert sorted(masks) == ["1.weight", "3.weight", "5.weight"]
    sizes = {"1.weight": 384, "3.weight": 288, "5.weight": 36}
    pruned = {k: int((~m).sum()) for k, m in masks.items()}
    if method in GLOBAL:
        assert sum(pruned.values()) == round(0.75 * 708)
    else:
        assert pruned == {k: round(0.75 * n) for k, n in sizes.items()}, \
            f"{method}: per-layer counts {pruned}; a method that allocates globally belongs in GLOBAL"
    # masks hold in a plain loop with a fresh optimizer and the method's callbacks
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for x, y in batches(1, 3):
        opt.zero_grad(); nn.functional.cross_entropy(model(x), y).backward(); opt.step()
    for k, m in masks.items():
        assert int((model.get_parameter(k).detach()[~m] != 0).sum()) == 0
    # deterministic under a seed
    again = run(method)
    twin_masks = get_masks(again.model)
    assert all(torch.equal(twin_masks[k], masks[k]) for k in masks)
    # state_dict + mask sidecar round trip, then finalize to the dense keys
    path = save_masks(model, tmp_path / "masks.safetensors")
    other = mlp()
    other.load_state_dict(model.state_dict(), strict=True)
    load_masks_(other, path)
    x = batches(2, 1)[0][0]
    torch.testing.assert_close(other(x), model(x))
    pk.finalize_(model)
    assert list(model.state_dict()) == list(mlp().state_dict())
    mlp().load_state_dict(model.state_dict(), strict=True)


@pytest.mark.parametrize("method", UNSTRUCTURED)
def test_method_rejects_a_structured_target_before_touching_the_model(method):
    load_all()
    model = mlp()
    state = copy.deepcopy(model.state_dict())
    ctx = RunContext(model=model, example_inputs=None, target="macs=0.5", train_data=batches(), calib=batches()[:1])
    with pytest.raises(ConfigError, match=rf"target='macs=0.5': {method} is an unstructured method"):
        get_method(method).run(ctx)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items()) and not get_masks(model)
