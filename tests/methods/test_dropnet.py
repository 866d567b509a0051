"""DropNet: lowest mean post-activation units are dropped first; iterative drop with rewinding."""
import torch

import prunekit as pk
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods._filter_common import post_activation_stats
from prunekit.methods.dropnet import select_drop


def test_planted_dead_node_is_dropped_in_the_first_cycle():
    # entry check (c): fc1 unit 7 has all incoming weights 0 and bias -1, so its ReLU output is always 0
    torch.manual_seed(0)
    model = pk.models.create("lenet300")
    with torch.no_grad():
        model.fc1.weight[7] = 0.0
        model.fc1.bias[7] = -1.0
    batches = [(torch.randn(32, 1, 28, 28), torch.zeros(32, dtype=torch.long)) for _ in range(2)]
    stats = post_activation_stats(model, {"fc1": model.fc1, "fc2": model.fc2}, batches)
    assert float(stats["fc1"]["mean"][7]) == 0.0 and float(stats["fc1"]["max"][7]) == 0.0
    scores = {k: v["mean"] for k, v in stats.items()}
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
