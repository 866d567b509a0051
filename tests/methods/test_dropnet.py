"""DropNet: lowest mean post-activation units are dropped first; iterative drop with rewinding."""
import pytest
import torch

import prunekit as pk
from prunekit.errors import MechanismWarning
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods._filter_common import fresh_initialisation, group_scores
from prunekit.methods.dropnet import select_drop


def test_planted_dead_node_is_dropped_in_the_first_cycle():
    # entry check (c): fc1 unit 7 has all incoming weights 0 and bias -1, so its ReLU output is always 0
    torch.manual_seed(0)
    model = pk.models.create("lenet300")
    with torch.no_grad():
        model.fc1.weight[7] = 0.0
        model.fc1.bias[7] = -1.0
    batches = [(torch.randn(32, 1, 28, 28), torch.zeros(32, dtype=torch.long)) for _ in range(2)]
    ctx = RunContext(model=model, example_inputs=batches[0][0][:2], target="params=0.5")
    scores = group_scores(model, ctx, "mean-act", batches)  # the registered criterion DropNet ranks by
    assert sorted(scores) == ["fc1", "fc2"] and float(scores["fc1"][7]) == 0.0
    assert float(scores["fc1"].min()) == 0.0 < float(torch.sort(scores["fc1"]).values[1])  # only unit 7 is silent
    for order, dropped in (("min", False), ("max", True)):
        keep = {k: torch.ones(len(v), dtype=torch.bool) for k, v in scores.items()}
        assert select_drop(scores, keep, 80, per_layer=False, order=order) == 80  # 20% of 400 units
        assert bool(keep["fc1"][7]) is dropped  # min drops it first; max keeps it


def test_per_layer_allocation_drops_the_same_share_everywhere():
    scores = {"a": torch.arange(10.0), "b": torch.arange(100.0, 120.0)}
    keep = {k: torch.ones(len(v), dtype=torch.bool) for k, v in scores.items()}
    assert select_drop(scores, keep, 6, per_layer=True) == 6
    assert keep["a"].tolist() == [False, False] + [True] * 8  # 2 of 10 and 4 of 20
    assert int((~keep["b"]).sum()) == 4 and keep["b"][4:].all()
    keep = {k: torch.ones(len(v), dtype=torch.bool) for k, v in scores.items()}
    assert select_drop(scores, keep, 6, per_layer=False) == 6 and keep["b"].all()  # global: all from a


def test_iterative_run_rewinds_and_removes_exactly_the_dropped_units():
    load_all()
    torch.manual_seed(0)
    model = pk.models.create("lenet300")
    data = pk.data.load("fashion-mnist", batch_size=64, subset=(640, 200), augment=False, val_fraction=0.0)
    ctx = RunContext(model=model, example_inputs=data.example_inputs(2), target="params=0.4", train_data=data.train,
                     calib=data.calib(2), prune_epochs=1,
                     train_config=pk.TrainConfig(epochs=1, lr=0.1, progress=False))
    res = get_method("dropnet").run(ctx)
    assert res.info["kept_params_fraction"] <= 0.4
    assert res.info["dropped_before_cut"] == res.info["removed_channels"]
    # 20% of the remaining units per cycle until the budget: several cycles, one more training after the last drop
    assert res.info["cycles"] >= 3
    assert model.fc1.out_features + model.fc2.out_features == 400 - res.info["removed_channels"]


def _dropnet_ctx(model, data, lr=0.1, **options):
    return RunContext(model=model, example_inputs=data.example_inputs(2), target="params=0.4", train_data=data.train,
                      calib=data.calib(2), prune_epochs=1, seed=3, options=options,
                      train_config=pk.TrainConfig(epochs=1, lr=lr, momentum=0.0, weight_decay=0.0, progress=False))


def test_rewind_goes_to_an_initialisation_not_to_the_weights_given():
    # issue 14: DropNet rewound to the weights it was given (in every benchmark the trained baseline); the
    # paper resets the survivors to their initial values. Mark the given weights (x50) and train with a
    # negligible lr: the end weights must be the fresh initialisation drawn under ctx.seed, not the given ones.
    load_all()
    torch.manual_seed(0)
    model = pk.models.create("lenet300")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(50.0)
    given = {k: v.clone() for k, v in model.state_dict().items()}
    init = fresh_initialisation(model, 3)
    data = pk.data.load("synthetic", batch_size=32, n_train=64, n_test=32, val_fraction=0.0)
    res = get_method("dropnet").run(_dropnet_ctx(model, data, lr=1e-8))
    assert res.engaged is True and res.telemetry["rewinds"] >= 1
    assert res.telemetry["rewound_to"] == "fresh initialisation (seed 3)"
    # fc3 is never pruned: its bias and the columns of the surviving fc2 units are the fresh initialisation
    torch.testing.assert_close(model.fc3.bias.detach(), init["fc3.bias"], atol=1e-5, rtol=0)
    w, w0 = model.fc3.weight.detach(), init["fc3.weight"]
    assert w.shape[1] < 100
    assert float(torch.cdist(w.t(), w0.t()).min(dim=1).values.max()) < 1e-4  # every kept column is an init column
    assert not torch.allclose(model.fc3.bias.detach(), given["fc3.bias"], atol=1.0)


def test_without_rewinding_dropnet_warns_and_names_the_rewind_option():
    load_all()
    torch.manual_seed(0)
    model = pk.models.create("lenet300")
    data = pk.data.load("synthetic", batch_size=32, n_train=64, n_test=32, val_fraction=0.0)
    with pytest.warns(MechanismWarning, match=r"set options\.rewind=true"):
        res = get_method("dropnet").run(_dropnet_ctx(model, data, rewind=False))
    assert res.engaged is False and res.telemetry == {"cycles": res.info["cycles"], "rewinds": 0, "rewound_to": "none"}
