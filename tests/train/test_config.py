import json

import pytest

from prunekit.errors import ConfigError
from prunekit.train import TrainConfig, lr_factor, make_optimizer, make_scheduler


def test_round_trip_through_json_keeps_every_field():
    cfg = TrainConfig(epochs=3, lr=0.05, optimizer="adamw", scheduler="onecycle", lr_milestones=(0.3, 0.6),
                      label_smoothing=0.1, checkpoint_dir="ckpt", checkpoint_every=7)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["type"] == "prunekit.TrainConfig" and d["version"] == 1
    assert TrainConfig.from_dict(d) == cfg


@pytest.mark.parametrize("kwargs, match", [
    ({"optimizer": "sgdd"}, r"optimizer='sgdd'.*did you mean 'sgd'"),
    ({"scheduler": "cosin"}, r"scheduler='cosin'.*did you mean 'cosine'"),
    ({"lr": -0.1}, r"lr=-0.1 is out of range; use a positive"),
    ({"epochs": 0}, r"epochs=0 is out of range"),
    ({"epochs": 2.0}, r"epochs=2.0 must be of type int"),
    ({"label_smoothing": 1.0}, r"label_smoothing=1.0 is out of range"),
    ({"amp": True}, r"amp=True needs a CUDA device but device='cpu'"),
    ({"resume": True}, r"resume=True needs checkpoint_dir"),
    ({"lr_milestones": (0.8, 0.2)}, r"lr_milestones=\(0.8, 0.2\) must be increasing"),
    ({"device": "gpu"}, r"device='gpu' is not a device"),
])
def test_bad_values_are_named_with_the_fix(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kwargs)


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError, match=r"lr=0.*;.*momentum=2"):
        TrainConfig(lr=0.0, momentum=2.0)


def test_from_dict_rejects_unknown_keys_and_types():
    with pytest.raises(ConfigError, match=r"unknown TrainConfig field 'lrr'.*did you mean 'lr'"):
        TrainConfig.from_dict({"lrr": 0.1})
    with pytest.raises(ConfigError, match=r"type='Recipe' is not a TrainConfig"):
        TrainConfig.from_dict({"type": "Recipe"})


def test_step_schedule_cuts_at_milestones():
    cfg = TrainConfig(scheduler="step", lr_milestones=(0.5, 0.75), lr_gamma=0.1)
    assert [lr_factor(s, 8, cfg) for s in range(8)] == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])


def test_cosine_with_warmup_and_onecycle_shapes():
    cfg = TrainConfig(scheduler="cosine", warmup_steps=1, min_lr=0.01, lr=0.1)
    # warm-up 1/2, then cosine from 1 down to min_lr/lr over the remaining 4 steps
    assert [lr_factor(s, 5, cfg) for s in range(5)] == pytest.approx(
        [0.5, 1.0, 0.1 + 0.9 * 0.5 * (1 + 0.7071067811865476), 0.55, 0.1 + 0.9 * 0.5 * (1 - 0.7071067811865476)])
    oc = TrainConfig(scheduler="onecycle")
    f = [lr_factor(s, 10, oc) for s in range(10)]
    assert f[0] == pytest.approx(0.04) and f[3] == pytest.approx(1.0) and f[-1] < 0.06
    assert max(f) == f[3]


def test_scheduler_follows_lr_factor_per_step():
    import torch

    cfg = TrainConfig(scheduler="step", lr=0.2, lr_milestones=(0.5,), lr_gamma=0.5)
    opt = make_optimizer(torch.nn.Linear(2, 2), cfg)
    sched = make_scheduler(opt, 4, cfg)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.2, 0.2, 0.1, 0.1])


@pytest.mark.parametrize("name, cls", [("sgd", "SGD"), ("adam", "Adam"), ("adamw", "AdamW")])
def test_make_optimizer_skips_frozen_parameters(name, cls):
    import torch

    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    m[0].weight.requires_grad_(False)
    opt = make_optimizer(m, TrainConfig(optimizer=name, lr=0.01, weight_decay=0.0))
    assert type(opt).__name__ == cls
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == 2 + 4 + 2


def test_one_builder_gives_every_method_its_training_config():
    """Issue 14: two helpers named ``train_config`` had different signatures; one builder is left."""
    from types import SimpleNamespace

    from prunekit.methods import _filter_common
    from prunekit.train import rewind
    from prunekit.train.config import method_train_config

    assert not hasattr(_filter_common, "train_config") and not hasattr(rewind, "train_config")
    base = TrainConfig(lr=0.02, scheduler="step", progress=False)
    ctx = SimpleNamespace(train_config=base, prune_epochs=3, seed=5, device="cpu")
    cfg = method_train_config(ctx)  # the filter methods' form: epochs from ctx.prune_epochs
    assert (cfg.epochs, cfg.seed, cfg.lr, cfg.scheduler) == (3, 5, 0.02, "step")
    cfg = method_train_config(ctx, 2, scheduler="constant")  # the weight methods' form: epochs given
    assert (cfg.epochs, cfg.scheduler, cfg.lr) == (2, "constant", 0.02)
    bare = SimpleNamespace(train_config=None, prune_epochs=1, seed=0, device="cpu")
    assert method_train_config(bare).progress is False
