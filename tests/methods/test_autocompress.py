"""AutoCompress (Liu et al., AAAI 2020): simulated annealing over per-layer rates, ADMM structured pruning to them.
The annealer's Metropolis rule and replay are tested in tests/allocate/test_search.py."""
import pytest
import torch

from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods import get_method, load_all
from prunekit.methods.autocompress import ChannelProjection

from method_setups import search_ctx, trained_tiny_convnet

load_all()


def _ctx(model, target="macs=0.5", epochs=3, **options):
    ctx = search_ctx(model, target, **{"recal_batches": 3, "val_images": 16, **options})
    ctx.prune_epochs = epochs
    return ctx


def test_the_projection_keeps_exactly_the_k_channels_of_largest_norm_over_all_their_filters():
    """Channels 0..3 written by two layers: a's rows have squared norms 1, 9, 4, 0 and b's (coupled, dim 1)
    columns 4, 0, 0, 16. Summed: 5, 9, 4, 16 -> keep 2: channels 3 and 1; a's rows 0 and 2 and b's columns 0
    and 2 are zeroed, the rest untouched."""
    a = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    b = torch.tensor([[2.0, 0.0, 0.0, 4.0]])
    p = ChannelProjection(sparsity=0.0, segments=(((0, 1, 2, 3), 2),),
                          producers=(("a", 0, (0, 1, 2, 3)), ("b", 1, (0, 1, 2, 3))))
    z, masks = p({"a": a, "b": b})
    assert p.channel_scores({"a": a, "b": b}).tolist() == [5.0, 9.0, 4.0, 16.0]
    assert p.removed({"a": a, "b": b}).tolist() == [0, 2]
    assert masks["a"][:, 0].tolist() == [False, True, False, True] and masks["b"][0].tolist() == [False, True, False, True]
    assert torch.equal(z["a"], torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))
    assert torch.equal(z["b"], torch.tensor([[0.0, 0.0, 0.0, 4.0]]))


def test_annealing_moves_admm_pulls_the_filters_onto_the_rates_and_the_cut_keeps_them():
    m = trained_tiny_convnet()
    res = get_method("autocompress").run(_ctx(m, annealing_steps=6, t0=1.0, rho=1.0, optimizer="protocol"))
    t = res.telemetry
    assert res.engaged is True and t["evaluated"] == 7 and t["accepted"] + t["rejected"] == 6 and t["accepted"] >= 1
    assert t["admm_gap_last"] < t["admm_gap_first"] and t["admm_updates"] == 3
    assert t["final_temperature"] == pytest.approx(1.0 * 0.9 ** 6)
    r0 = res.info["rounds"][0]
    assert all(c <= 0.5 for c in r0["costs"]) and r0["cost"] <= 0.5
    assert [m[0].out_channels, m[3].out_channels] == r0["kept"] == list(res.info["widths"].values())


def test_without_annealing_moves_it_warns():
    with pytest.warns(MechanismWarning, match="options.annealing_steps"):
        res = get_method("autocompress").run(_ctx(trained_tiny_convnet(), annealing_steps=0, epochs=1))
    assert res.engaged is False and res.telemetry["evaluated"] == 1 and res.telemetry["accepted"] == 0


def test_two_rounds_reach_the_target_through_an_intermediate_one():
    m = trained_tiny_convnet()
    res = get_method("autocompress").run(_ctx(m, annealing_steps=2, rounds=2, epochs=1, rho=1.0, optimizer="protocol"))
    goals = [r["goal"] for r in res.info["rounds"]]
    assert goals == pytest.approx([0.5 ** 0.5, 0.5]) and res.telemetry["rounds"] == 2
    assert res.info["rounds"][1]["kept"] == [m[0].out_channels, m[3].out_channels]


def test_bad_input_leaves_the_model_as_it_was():
    m = trained_tiny_convnet()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ConfigError, match="rounds"):
        get_method("autocompress").run(_ctx(m, rounds=0))
    with pytest.raises(ConfigError, match="step"):
        get_method("autocompress").run(_ctx(m, step=1.5))
    with pytest.raises(ConfigError, match="structured method"):
        get_method("autocompress").run(_ctx(m, target="sparsity=0.5"))
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())


def test_channels_coupled_by_a_residual_sum_are_projected_and_cut_together():
    from prunekit.methods import RunContext
    from prunekit.testing import models

    m, x = models()["residual"]()
    out = m(x).shape[1]
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(4, *x.shape[1:], generator=g), torch.randint(0, out, (4,), generator=g)) for _ in range(4)]
    ctx = RunContext(model=m, example_inputs=x, target="macs=0.6", train_data=data[:3], val_data=data[3:],
                     prune_epochs=2, options={"annealing_steps": 2, "recal_batches": 1, "rho": 1.0,
                                              "optimizer": "protocol"})
    res = get_method("autocompress").run(ctx)
    assert res.telemetry["admm_updates"] == 2 and res.info["rounds"][0]["cost"] <= 0.6
    assert m(x).shape == (2, out)  # the cut model runs: the coupled producers lost the same channels
