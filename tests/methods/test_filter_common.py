"""Unit tests of the update rules, scores and helpers shared by the training-time filter methods."""
import pytest
import torch

from prunekit.surgery.factorize import BasisConv, Factorized, HingeConv
from torch import nn
from method_setups import bundle_ctx, conv_ctx, tiny_convnet, vgg_synthetic

from prunekit.errors import ConfigError
from prunekit.methods import METHODS, get_method, load_all
from prunekit.methods._filter_common import (
    ChannelGates, apg_nag_step, centripetal_gradient, cluster_average_matrix, conv_bn_pairs, fresh_initialisation,
    global_keep_masks, kmeans_clusters, lowest, soft_threshold, weight_scores,
)


def test_soft_threshold_matches_elementwise_definition():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.5])
    ref = torch.tensor([max(abs(v) - 0.5, 0.0) * (1 if v > 0 else -1) for v in x.tolist()])
    torch.testing.assert_close(soft_threshold(x, 0.5), ref)
    assert (soft_threshold(x, 0.5) == 0).sum() == 3  # |x| <= threshold lands on exactly zero


def test_apg_step_hand_computed():
    # z = prox(1.0 - 0.1*2.0, 0.1*0.5) = 0.75; v = 0.75 - 1 + 0.9*0.1 = -0.16; lam = 0.75 + 0.9*(-0.16) = 0.606
    lam, v = apg_nag_step(torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([0.1]),
                          lr=0.1, strength=0.5, momentum=0.9)
    torch.testing.assert_close(v, torch.tensor([-0.16]))
    torch.testing.assert_close(lam, torch.tensor([0.606]))


def test_apg_step_keeps_gates_non_negative_and_exact_zero():
    lam, v = apg_nag_step(torch.tensor([0.01, 0.0]), torch.tensor([1.0, 0.0]), torch.zeros(2),
                          lr=0.1, strength=0.1, momentum=0.9)
    assert lam.tolist() == [0.0, 0.0] and (lam >= 0).all()


def test_centripetal_gradient_equalises_gradients_and_pulls_to_mean():
    w = torch.tensor([[1.0, 0.0], [3.0, 0.0], [5.0, 5.0]])
    g = torch.tensor([[1.0, 1.0], [3.0, -1.0], [2.0, 2.0]])
    avg = cluster_average_matrix([[0, 1], [2]], 3)
    out = centripetal_gradient(w, g, avg, eps=0.1)
    # cluster {0,1}: mean grad [2, 0]; mean weight [2, 0] -> pulls -0.1 and +0.1 on dim 0
    torch.testing.assert_close(out, torch.tensor([[1.9, 0.0], [2.1, 0.0], [2.0, 2.0]]))
    # an SGD step with this gradient strictly shrinks the intra-cluster distance
    w2 = w - 1.0 * out
    assert (w2[0] - w2[1]).norm() < (w[0] - w[1]).norm()


def test_cluster_matrix_rejects_overlap_and_gaps():
    with pytest.raises(ConfigError, match="appear in two clusters"):
        cluster_average_matrix([[0, 1], [1, 2]], 3)
    with pytest.raises(ConfigError, match=r"filters \[2\] belong to no cluster"):
        cluster_average_matrix([[0, 1]], 3)


def test_kmeans_finds_planted_clusters_and_exact_k():
    torch.manual_seed(0)
    centers = torch.tensor([[10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]])
    x = torch.cat([c + 0.1 * torch.randn(4, 2) for c in centers])  # 12 filters, 3 planted groups
    clusters = kmeans_clusters(x, 3, seed=1)
    assert sorted(map(tuple, clusters)) == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11)]
    assert len(kmeans_clusters(x, 7)) == 7 and all(kmeans_clusters(x, 7))
    with pytest.raises(ConfigError, match="k=13"):
        kmeans_clusters(x, 13)


def test_fpgm_ranking_differs_from_norm():
    # 1-D filters -1, 2, 3, 4, 9: smallest norm is filter 0; the geometric median is filter 2
    # (distance sums 22, 13, 12, 13, 28 by hand); scored through the registered criteria
    w = torch.tensor([[-1.0], [2.0], [3.0], [4.0], [9.0]])
    torch.testing.assert_close(weight_scores(w, "fpgm"), torch.tensor([22.0, 13.0, 12.0, 13.0, 28.0]))
    torch.testing.assert_close(weight_scores(w.view(5, 1, 1, 1), "l2"), torch.tensor([1.0, 2.0, 3.0, 4.0, 9.0]))
    assert lowest(weight_scores(w, "fpgm"), 1).tolist() == [2]
    assert lowest(weight_scores(w, "l2"), 1).tolist() == [0]
    with pytest.raises(ConfigError, match="criterion='mean-act' needs"):
        weight_scores(w, "mean-act")


def test_fresh_initialisation_is_seeded_and_leaves_the_model_and_the_generator_alone():
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(7.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(123)
    a = fresh_initialisation(net, 5)
    after_draw = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), after_draw)  # the global generator was not advanced
    b = fresh_initialisation(net, 5)
    assert all(torch.equal(a[k], b[k]) for k in a) and set(a) == set(before)
    assert not torch.equal(a["0.weight"], fresh_initialisation(net, 6)["0.weight"])
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert float(a["0.weight"].abs().max()) <= 0.5 and a["1.weight"].eq(1).all()  # kaiming bound 1/2; BN gamma 1


def test_global_keep_masks_counts_and_normalisation():
    a, b = torch.tensor([10.0, 20.0, 30.0]), torch.tensor([0.1, 0.2, 0.3])
    raw = global_keep_masks([a, b], 3)
    assert raw[0].tolist() == [True, True, True] and raw[1].tolist() == [False, False, True]  # min_keep=1
    norm = global_keep_masks([a, b], 4, normalize=True)
    assert sum(int(m.sum()) for m in norm) == 4
    assert norm[0].tolist() == norm[1].tolist() == [False, True, True]


def test_conv_bn_pairs_follow_data_flow_not_declaration_order():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn_b, self.bn_a = nn.BatchNorm2d(4), nn.BatchNorm2d(3)
            self.a, self.b = nn.Conv2d(1, 3, 3), nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.bn_b(self.b(torch.relu(self.bn_a(self.a(x)))))

    net = Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert conv_bn_pairs(net, torch.randn(2, 1, 8, 8)) == [("a", "bn_a"), ("b", "bn_b")]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_channel_gates_fold_is_exact():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2))
    net.eval()
    x = torch.randn(3, 1, 8, 8)
    gates = ChannelGates(net, ["1"])
    with torch.no_grad():
        gates.gates["1"].copy_(torch.tensor([0.0, 0.5, 2.0, 1.0]))
    gated = net(x).detach()
    keys = set(net.state_dict())
    gates.fold_()
    torch.testing.assert_close(net(x), gated)
    assert set(net.state_dict()) == keys and net[1].weight[0] == 0 and net[1].bias[0] == 0


# ---------------------------------------------------------------- contract tests over the training-time methods
load_all()
# The training-time structured methods, computed from the registry: they need train data and no calibration
# batches (the one-shot family, which scores from weights or calibration batches, has its contract in
# test_l1_filter.py). A newly registered method of this kind is in the contract without editing a list.
# The width-search methods (they need held-out "val" data to score candidates, and train data only for BN
# recalibration or a few fitness steps) have their own contract: tests/methods/test_eagleeye.py, test_legr.py,
# test_amc.py; the search-space features pop and da-nas (not-meaningful) in test_pop.py and test_da_nas.py.
TRAINING_METHODS = [m for m in METHODS.names() if get_method(m).kind == "structured"
                    and "train" in get_method(m).needs and "calib" not in get_method(m).needs
                    and "val" not in get_method(m).needs]
# prune_epochs=0 is meaningful for these: filter-basis then keeps its SVD start (docs/methods-filter-9.md)
ONE_SHOT_ALLOWED = {"filter-basis"}


def test_training_methods_are_computed_from_the_registry_and_hold_the_methods_they_were_written_for():
    assert {"slimming", "bn-ista", "sss", "sfp", "gate-decorator", "csgd", "implicit-sparsity", "rethinking",
            "dropnet", "gdp"} <= set(TRAINING_METHODS)
    assert set(_RUN_OPTIONS) <= set(TRAINING_METHODS), sorted(set(_RUN_OPTIONS) - set(TRAINING_METHODS))
    assert not {"l1-filter", "taylor-fo", "agp"} & set(TRAINING_METHODS)


def _tiny_ctx(**kw):
    model = tiny_convnet()
    x = torch.randn(8, 1, 6, 6)
    return conv_ctx(model, [(x, torch.randint(0, 3, (8,)))], **{"train_config": None, **kw})


@pytest.mark.parametrize("method", TRAINING_METHODS)
def test_training_method_is_registered_as_structured_and_needing_data(method):
    from prunekit.methods import get_method, load_all

    load_all()
    spec = get_method(method)
    assert spec.kind == "structured" and spec.needs_data is True
    assert spec.module.startswith("prunekit.methods.")


@pytest.mark.parametrize("method", TRAINING_METHODS)
@pytest.mark.parametrize("bad, match", [
    ({"train_data": None}, r"method '.*' needs train data but train_data=None"),  # the harness's check
    ({"prune_epochs": 0}, r"prune_epochs=0: method '.*' is a training-time method and cannot run one-shot"),
    ({"target": "sparsity=0.5"}, r"target='sparsity=0.5'.*write e.g. target='macs=0.5'"),
])
def test_training_method_refuses_bad_context_and_leaves_model_unchanged(method, bad, match):
    from prunekit.methods import get_method, load_all

    load_all()
    if bad == {"prune_epochs": 0} and method in ONE_SHOT_ALLOWED:
        pytest.skip(f"{method}: prune_epochs=0 is its one-shot form")
    ctx = _tiny_ctx(**bad)
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    with pytest.raises(ConfigError, match=match):
        get_method(method).run(ctx)
    after = ctx.model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m._forward_hooks for m in ctx.model.modules())  # no gate hooks left behind


@pytest.mark.parametrize("method", TRAINING_METHODS)
def test_training_method_refuses_unknown_option_with_closest_match(method):
    from prunekit.methods import get_method, load_all

    load_all()
    spec = get_method(method)
    first = sorted(spec.defaults)[0]
    typo = first[:-1] + ("x" if first[-1] != "x" else "y")
    ctx = _tiny_ctx(options={typo: 1})
    with pytest.raises(ConfigError, match=rf"unknown option of method '{method}' {typo!r}; did you mean {first!r}"):
        get_method(method).run(ctx)


_RUN_OPTIONS = {"gate-decorator": {"ticks_per_tock": 2, "tick_batches": 2}, "rethinking": {"source": "slimming"},
                "dropnet": {"fraction": 0.5}}  # a method missing here runs with its registered smoke options


def _run_small(method):
    import prunekit as pk

    model, data = vgg_synthetic(n_train=64, n_test=32, batch_size=32)
    ctx = bundle_ctx(model, data, calib=data.calib(1), train_config=pk.TrainConfig(epochs=1, lr=0.05, progress=False),
                     options=_RUN_OPTIONS.get(method, get_method(method).smoke))
    return ctx, get_method(method).run


@pytest.mark.parametrize("method", TRAINING_METHODS)
def test_training_method_ends_in_a_physically_smaller_model_at_the_target(method):
    import json

    from prunekit.graph import build_graph

    ctx, run = _run_small(method)
    model, x = ctx.model, ctx.example_inputs
    dense_macs, keys = build_graph(model, x).macs(), set(model.state_dict())
    dense_params = sum(p.numel() for p in model.parameters())
    res = run(ctx)
    macs = build_graph(res.model, x).macs()
    assert macs <= 0.5 * dense_macs
    assert sum(p.numel() for p in res.model.parameters()) < dense_params
    decomposed = [n for n, mod in res.model.named_modules() if isinstance(mod, (Factorized, HingeConv, BasisConv))]
    kept = {k for k in res.model.state_dict() if not any(k.startswith(n + ".") for n in decomposed)}
    assert kept == {k for k in keys if not any(k.startswith(n + ".") for n in decomposed)}  # same keys as the
    # dense architecture, except inside layers a decomposition replaced (filter-basis: a basis and a 1x1 mix)
    assert res.model(x).shape == (2, 10)
    json.dumps(res.info)  # JSON-ready


@pytest.mark.parametrize("method", TRAINING_METHODS)
def test_training_method_is_deterministic_under_its_seed(method):
    results = []
    for _ in range(2):
        ctx, run = _run_small(method)
        results.append(run(ctx).model.state_dict())
    a, b = results
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
