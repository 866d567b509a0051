"""C-SGD: the centripetal update pulls clusters together and the merge keeps the function."""
import pytest
import torch
from method_setups import bundle_ctx, vgg_synthetic

import prunekit as pk
from prunekit.errors import MechanismWarning
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods._filter_common import cut_to_target, filter_groups, merge_clusters_
from prunekit.methods.csgd import centripetal_callback, cluster_groups, cluster_spread


def _vgg():
    torch.manual_seed(0)
    m = pk.models.create("vgg-small", width=0.25)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return m.eval()


def test_merge_of_identical_filters_is_exact():
    model = _vgg()
    x = torch.randn(4, 1, 28, 28)
    ctx = RunContext(model=model, example_inputs=x[:1], target="macs=0.99")
    groups = filter_groups(model, ctx)
    # plant two clusters of identical channels in the 2nd conv (a 3x3 conv reads them) and in the last conv
    # (the classifier reads them through global pooling)
    planted = {"features.3": [[0, 2, 5], [1], [3], [4], [6], [7]],
               "features.17": [[0, 31]] + [[i] for i in range(1, 31)]}
    with torch.no_grad():
        for key, clusters in planted.items():
            g = next(g for g in groups if g.key == key)
            mods = dict(model.named_modules())
            conv, bn = mods[g.convs[0]], mods[g.bns[0]]
            for c in clusters:
                for t in (conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var):
                    t[c[1:]] = t[c[0]].clone()
    before = model(x).detach()
    scores = merge_clusters_(model, ctx, groups, planted)
    info = cut_to_target(model, ctx, scores, "global")
    assert info["widths"]["features.3"] == 6 and info["widths"]["features.17"] == 31
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)


def test_centripetal_training_merges_clusters_and_the_merge_keeps_accuracy():
    # entry check (a)+(b), scaled: 2k Fashion-MNIST images, vgg-small at width 0.25, 2 epochs (64 steps) of
    # C-SGD with eps=2.0 at a constant lr 0.05 and momentum 0.5 (the paper's 3e-3 is meant for ~100k steps;
    # with momentum m the intra-cluster distance shrinks at best by sqrt(m) per step, so 0.9 would need ~400).
    data = pk.data.load("fashion-mnist", batch_size=64, subset=(2000, 1000), augment=False, val_fraction=0.0)
    model = _vgg().train()
    x = data.example_inputs(2)
    ctx = RunContext(model=model, example_inputs=x, target="macs=0.5", seed=0)
    groups, clusters = cluster_groups(model, ctx)
    spread0 = cluster_spread(model, groups, clusters)
    cb = centripetal_callback(model, groups, clusters, eps=2.0, bn_eps_factor=1.0)
    pk.fit(model, data.train, pk.TrainConfig(epochs=2, lr=0.05, momentum=0.5, scheduler="constant", progress=False),
           callbacks=[cb])
    spread = cluster_spread(model, groups, clusters)
    assert spread0 > 0.5 and spread < 1e-2
    acc = pk.evaluate(model, data.test)["accuracy"]
    logits = torch.cat([model.eval()(xb) for xb, _ in data.test]).detach()
    scores = merge_clusters_(model, ctx, groups, clusters)
    info = cut_to_target(model, ctx, scores, "uniform")
    assert info["kept_macs_fraction"] <= 0.5
    after = torch.cat([model.eval()(xb) for xb, _ in data.test]).detach()
    rel = float((after - logits).abs().max() / logits.abs().max())
    assert rel < 1e-2
    assert abs(pk.evaluate(model, data.test)["accuracy"] - acc) <= 0.002


def _run_csgd(**options):
    load_all()
    model, data = vgg_synthetic(n_train=32, n_test=16, batch_size=16)
    # plain SGD (no momentum): one step with lr * eps = 1 moves every filter onto its cluster mean
    cfg = pk.TrainConfig(lr=0.1, momentum=0.0, scheduler="constant", weight_decay=0.0, progress=False)
    return get_method("csgd").run(bundle_ctx(model, data, train_config=cfg, options=options))


def test_csgd_reports_converged_clusters_when_the_pull_is_strong_enough():
    res = _run_csgd(eps=10.0)
    t = res.telemetry
    assert res.engaged is True and t["clusters"] > 0 and t["clusters_converged"] == t["clusters"]
    assert t["spread_start"] > 0.5 and t["spread_max"] < 1e-4 and t["spread_mean"] <= t["spread_max"]
    assert res.info["kept_macs_fraction"] <= 0.5


def test_csgd_at_the_papers_strength_and_a_short_budget_warns_that_clusters_did_not_merge():
    # issue 14: at the recipes' budget the clusters ended 1.3-1.5 apart and were merged anyway, silently
    with pytest.warns(MechanismWarning, match=r"raise options\.eps"):
        res = _run_csgd()
    t = res.telemetry
    assert res.engaged is False and t["clusters_converged"] < t["clusters"] and t["spread_max"] > 0.5
