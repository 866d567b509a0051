"""MetaPruning (Liu et al., ICCV 2019): a weight-generating PruningNet, then evolution in the FLOPs window."""
import copy

import numpy as np
import pytest
import torch

from prunekit.allocate.search import SearchBudget, SearchSpace, run_search
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods import get_method, load_all
from prunekit.methods.metapruning import Evolution, MetaPruningConfig, PruningNet
from prunekit.train.slimmable import Slimmable, WidthSampler

from method_setups import conv_batches, search_ctx, tiny_convnet

load_all()
SMALL = {"population": 6, "generations": 3, "parents": 2, "mutations": 3, "crossovers": 2, "recal_batches": 2,
         "val_images": 16, "window": 0.3, "ratio_min": 0.25, "ratio_step": 0.25}


def test_the_pruningnet_generates_each_encodings_weights_and_crops_them_exactly():
    m = tiny_convnet().double().eval()
    x = torch.randn(3, 1, 6, 6, dtype=torch.float64)
    slim = Slimmable(m, x[:1])
    pnet = PruningNet(slim, hidden=4).double().eval()
    assert pnet.fqns == ["0.weight", "3.weight"]
    # conv 3 reads group 0 and writes group 1: its generator is fed (its output ratio, its input ratio)
    assert pnet.encoding("3.weight", (0.5, 0.25)).tolist() == [0.25, 0.5]
    assert pnet.encoding("0.weight", (0.5, 0.25)).tolist() == [0.5, 1.0]  # the image is never pruned
    w = (2, 3)
    gen = pnet.generated(w)
    assert not torch.allclose(gen["3.weight"], pnet.generated((4, 6))["3.weight"])  # another encoding, other weights
    pnet.widths = w
    out = pnet(x)
    twin = copy.deepcopy(m)  # the generated weights written into the model, then cut physically: the same net
    with torch.no_grad():
        for fqn, t in gen.items():
            dict(twin.named_parameters())[fqn].copy_(t)
    cut = Slimmable(twin, x[:1]).pruned_copy(w).eval()
    assert cut[0].out_channels == 2 and cut[3].out_channels == 3
    assert torch.allclose(out, cut(x), atol=1e-12)
    out.sum().backward()  # the loss reaches the generators, not the model's own conv weights
    assert pnet.generators[1][2].weight.grad.abs().sum() > 0 and m[3].weight.grad is None


def test_evolution_keeps_every_candidate_in_the_window_and_breeds_from_the_best():
    space = SearchSpace.of([f"g{i}" for i in range(6)], [8] * 6)
    sampler = WidthSampler(space, grid=(0.25, 0.5, 0.75, 1.0))
    cost = lambda w: sum(w) / 48  # noqa: E731
    cfg = MetaPruningConfig(population=10, parents=3, mutations=4, crossovers=4, generations=4)
    evo = Evolution(sampler, cost, 0.45, 0.55, cfg)
    score = lambda w: float(w[0] - w[5])  # noqa: E731  (a planted preference: wide g0, narrow g5)
    rec = run_search(space, evo, score, cost, 0.55, SearchBudget(evaluations=40), seed=0)
    assert len(rec.trials) == 40 and evo.generation == 3
    assert all(0.45 <= t.cost <= 0.55 for t in rec.trials)
    assert len({t.widths for t in rec.trials}) == 40  # never the same encoding twice
    origins = [t.info["origin"] for t in rec.trials]
    assert origins[:10] == ["random"] * 10 and {"mutation", "crossover"} <= set(origins[10:])
    first, last = max(t.score for t in rec.trials[:10]), rec.best(1)[0].score
    assert last > first  # breeding from the top candidates found a better one than the random generation


def _ctx(**options):
    ctx = search_ctx(tiny_convnet(), "macs=0.5", **{**SMALL, **options})
    ctx.train_data = conv_batches(12, labels="tercile")[:10]
    ctx.val_data = conv_batches(12, labels="tercile")[10:]
    ctx.prune_epochs = 2
    return ctx


def test_at_small_settings_the_search_tells_encodings_apart_and_cuts_the_best_inside_the_window():
    ctx = _ctx()
    res = get_method("metapruning").run(ctx)
    t = res.telemetry
    slim = Slimmable(tiny_convnet(), ctx.example_inputs)
    grid = WidthSampler(slim.space, grid=(0.25, 0.5, 0.75, 1.0)).choices
    inside = [(a, b) for a in grid[0] for b in grid[1] if 0.2 - 1e-9 <= slim.cost((a, b)) <= 0.5 + 1e-9]
    # 4 x 4 encodings, of which `inside` fall in the window: the search finds every one and stops
    assert res.engaged is True and t["pruningnet_steps"] == 20 and t["evaluated"] == len(inside) < 18
    assert all(0.2 - 1e-9 <= c <= 0.5 + 1e-9 for c in res.info["costs"])
    assert t["best_score"] == max(res.info["scores"])
    assert list(res.info["widths"].values()) == [ctx.model[0].out_channels, ctx.model[3].out_channels]


def test_one_candidate_cannot_be_told_apart_and_warns():
    with pytest.warns(MechanismWarning, match="options.population"):
        res = get_method("metapruning").run(_ctx(population=1, generations=1))
    assert res.engaged is False and res.telemetry["evaluated"] == 1


def test_an_unreachable_window_is_refused_and_the_model_is_left_as_it_was():
    ctx = _ctx(window=0.001, max_draws=20, ratio_min=1.0)  # only the full width: 1.0 of the MACs, never <= 0.5
    before = copy.deepcopy(ctx.model.state_dict())
    with pytest.raises(ConfigError, match=r"no encoding of the ratio grid .* options.window"):
        get_method("metapruning").run(ctx)
    assert all(torch.equal(v, ctx.model.state_dict()[k]) for k, v in before.items())


@pytest.mark.slow
def test_entry_check_scaled_window_respected_search_beats_uniform_and_predictions_rank_like_training():
    """The entry's check on the 4-conv VGG, 2,000 Fashion-MNIST images (benchmarks/metapruning_check.py).

    Calibrated by ``nice python benchmarks/metapruning_check.py --seeds 0``: 38 encodings (every one the
    {0.25, 0.5, 0.75, 1} grid has in [0.45, 0.55]), best 38.60% vs uniform-0.7x 24.80% on the PruningNet,
    Spearman 0.371 over 6 encodings (PruningNet accuracy vs 1 epoch from scratch)."""
    from benchmarks.metapruning_check import one

    r = one(0, 2000, 3, 3, 500)
    assert r["all_in_window"] and r["evaluated"] >= 30
    assert r["best_score"] >= r["uniform_score"]
    assert r["spearman"] >= 0.3
