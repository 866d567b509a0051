"""Rethinking: the source method's pruned architecture, re-initialised and trained from scratch."""
import copy

import pytest
import torch
from method_setups import bundle_ctx

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.methods import get_method, load_all
from prunekit.methods.rethinking import reinitialise_, scratch_epochs


def test_scratch_budgets():
    assert scratch_epochs(4, 1000, 500) == 8  # Scratch-B: same compute
    assert scratch_epochs(4, 1000, 250) == 8  # capped at 2x
    assert scratch_epochs(4, 1000, 800) == 5  # 4 * 1.25
    assert scratch_epochs(4, 1000, 250, "scratch-E") == 4


def test_reinitialise_redraws_every_parameter_and_statistic():
    torch.manual_seed(0)
    model = pk.models.create("vgg-small", width=0.25)
    pk.fit(model, [(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)))], pk.TrainConfig(progress=False))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reinitialise_(model)
    after = model.state_dict()
    assert [k for k in before if torch.equal(before[k], after[k])] == []  # weights, biases and BN statistics
    assert all(float(v) == 0 for k, v in after.items() if k.endswith("num_batches_tracked"))


def _ctx(model, data, **kw):
    return bundle_ctx(model, data, train_config=pk.TrainConfig(epochs=1, lr=0.05, progress=False), **kw)


def test_rethinking_reproduces_the_source_widths_and_trains_from_scratch():
    load_all()
    data = pk.data.load("synthetic", batch_size=32, n_train=64, n_test=32, val_fraction=0.0)
    torch.manual_seed(0)
    model = pk.models.create("vgg-small", width=0.25)
    twin = copy.deepcopy(model)
    source = get_method("sfp").run(_ctx(twin, data))
    res = get_method("rethinking").run(_ctx(model, data, options={"source": "sfp", "schedule": "scratch-B"}))
    shapes = {k: tuple(v.shape) for k, v in res.model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in source.model.state_dict().items()}
    assert res.info["scratch_epochs"] == scratch_epochs(1, res.info["dense_macs"], res.info["pruned_macs"]) == 2
    # it trains more than the methods it is compared with: sfp's epoch, then 2 from scratch
    assert res.telemetry == {"scratch_epochs": 2, "source_epochs": 1, "epochs_trained": 3, "reinitialised": 13}
    assert res.engaged is True and res.info["epochs_trained"] == 3 and res.info["prune_epochs"] == 1
    assert not torch.equal(res.model.features[0].weight, source.model.features[0].weight)


def test_rethinking_refuses_itself_and_unstructured_sources():
    load_all()
    data = pk.data.load("synthetic", batch_size=32, n_train=32, n_test=32, val_fraction=0.0)
    model = pk.models.create("vgg-small", width=0.25)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"options\['source'\]='rethinking'"):
        get_method("rethinking").run(_ctx(model, data, options={"source": "rethinking"}))
    with pytest.raises(ConfigError, match=r"options\['schedule'\]='scratch_B' is not one of \['scratch-E', "
                                          r"'scratch-B'\]; did you mean 'scratch-B'\?"):
        get_method("rethinking").run(_ctx(model, data, options={"schedule": "scratch_B"}))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
