"""CLIP-Q: clip-then-quantise by hand, the straight-through in-parallel update, the search, telemetry."""
import pytest
import torch

from method_setups import tiny_mlp_task
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.clip_q import ClipQuantize
from prunekit.quantize import clip_partition
from prunekit.train import TrainConfig, fit

load_all()
TRAIN = TrainConfig(epochs=1, lr=0.5, weight_decay=0.0, momentum=0.0, scheduler="constant", progress=False)


def _ctx(model, data, **kw):
    base = dict(model=model, example_inputs=data[0][0][:2], target="sparsity=0.9", train_data=data, prune_epochs=2,
                train_config=TRAIN)
    base.update(kw)
    return RunContext(**base)


def test_clip_then_quantise_on_a_hand_made_tensor():
    w = torch.tensor([[0.02, -0.5, 0.9], [-0.01, 1.6, -1.0]])
    q, kept = clip_partition(w, 2 / 6, 1)  # |0.01|, |0.02| clipped; 1 bin over [-1, 1.6]: the mean of all four
    assert kept.tolist() == [[False, True, True], [False, True, True]]
    torch.testing.assert_close(q, torch.tensor([[0.0, 0.25, 0.25], [0.0, 0.25, 0.25]]))


def test_update_uses_the_gradient_at_the_quantised_weights_on_the_full_precision_ones():
    model, data = tiny_mlp_task(6, 8, 3, 1)
    w0 = model[0].weight.detach().clone()
    cb = ClipQuantize(model, {"0.weight": (0.5, 2)})
    q0 = clip_partition(w0, 0.5, 2)[0]
    ref = torch.nn.Sequential(*[torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)])
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        ref[0].weight.copy_(q0)
    torch.nn.functional.cross_entropy(ref(data[0][0]), data[0][1]).backward()
    fit(model, data, TRAIN.replace(lr=0.1), callbacks=[cb])
    expected_full = w0 - 0.1 * ref[0].weight.grad
    torch.testing.assert_close(cb.full["0.weight"], expected_full)
    torch.testing.assert_close(model[0].weight.detach(), clip_partition(expected_full, 0.5, 2)[0])


def test_fixed_setting_has_exact_zeros_and_few_values_and_weights_leave_the_clipped_set():
    model, data = tiny_mlp_task(20, 40, 4, 8)
    res = get_method("clip-q").run(_ctx(model, data, options={"search": "fixed", "bits": 3}))
    for f in ("0.weight", "2.weight"):
        w = model.get_parameter(f).detach()
        assert int((w == 0).sum()) == round(0.9 * w.numel())
        assert torch.unique(w[w != 0]).numel() <= 2 ** 3 - 1
    assert res.engaged is True and res.telemetry["reentered"] >= 1 and res.telemetry["steps"] == 16
    assert res.info["packed_bytes"] < res.info["dense_bytes"]


def test_bayesopt_engages_meets_the_target_and_a_heavy_size_weight_picks_fewer_bits():
    model, data = tiny_mlp_task(20, 40, 4, 8)
    res = get_method("clip-q").run(_ctx(model, data, target="sparsity=0.5",
                                        options={"budget": 8, "startup": 4, "gamma": 50.0}))
    assert res.engaged is True and res.info["search"]["evaluations"] == 8
    assert res.info["sparsity"] >= 0.5 - 1e-3
    bits = [v["b"] for v in res.info["layers"].values()]
    assert sum(bits) / len(bits) < 5  # the uniform first point has 5 bits per layer
    assert res.info["search"]["best_objective"] > res.info["search"]["first_objective"]


def test_no_learning_no_weight_leaves_the_clipped_set_and_the_run_warns():
    model, data = tiny_mlp_task(20, 40, 4, 4)
    with pytest.warns(MechanismWarning, match="raise prune_epochs or the learning rate"):
        res = get_method("clip-q").run(_ctx(model, data, train_config=TRAIN.replace(lr=1e-12),
                                            options={"search": "fixed"}))
    assert res.engaged is False and res.telemetry["reentered"] == 0


def test_bad_options_leave_the_model_unchanged():
    model, data = tiny_mlp_task(20, 40, 4, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="bits_min=6 > bits_max=3"):
        get_method("clip-q").run(_ctx(model, data, options={"bits_min": 6, "bits_max": 3}))
    with pytest.raises(ConfigError, match="prune_epochs=0"):
        get_method("clip-q").run(_ctx(model, data, prune_epochs=0))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
