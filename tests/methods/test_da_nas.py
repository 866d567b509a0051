"""da-nas: registered as not-meaningful with its reason; progressive pruning of width candidates on a class
curriculum, and the supernet search of its check."""
import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError, MechanismWarning
from prunekit.graph import build_graph
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.da_nas import class_batches, class_error, supernet_search
from prunekit.models.supernet import SuperNet
from prunekit.train import TrainConfig

load_all()


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def _ctx(**options):
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 1, 6, 6, generator=g), torch.arange(16) % 4) for _ in range(2)]
    opts = {"multipliers": [0.25, 0.5, 1.0], "stages": 2, "finetune_steps": 1, "val_images": 32, **options}
    return RunContext(model=_net(), example_inputs=data[0][0][:1], target="macs=0.6", train_data=data,
                      val_data=data, options=opts)


def test_da_nas_is_listed_as_not_meaningful_with_the_entrys_reason():
    spec = get_method("da-nas")
    assert spec.status == "not-meaningful" and "supernet" in spec.left_out and "curriculum" in spec.left_out


def test_class_batches_and_class_error_by_hand():
    x, y = torch.arange(4.).view(4, 1), torch.tensor([0, 1, 2, 1])
    assert [b[1].tolist() for b in class_batches([(x, y)], [1])] == [[1, 1]]

    class Fixed(nn.Module):  # predicts class 1 always
        def forward(self, x):
            return torch.tensor([[0.0, 1.0, 0.0]]).repeat(len(x), 1)

    assert class_error(Fixed(), [(x, y)], 3) == [1.0, 0.0, 1.0]


def test_first_stage_uses_only_the_easiest_classes_and_drops_candidates_there():
    ctx = _ctx(curriculum=[0.25, 1.0])
    dense = build_graph(ctx.model, ctx.example_inputs).macs()
    res = get_method("da-nas").run(ctx)
    t, info = res.telemetry, res.info
    err = info["class_error"]
    easiest = sorted(range(4), key=lambda c: (err[c], c))[:1]
    assert t["first_classes"] == easiest and info["classes"][-1] == [0, 1, 2, 3]
    n = t["candidates"]
    assert res.engaged is True and t["dropped_early"] == n // 2
    # every candidate scored on the 8 images of one class, the surviving half on all 32: not 32 per candidate
    assert t["compute_fraction"] == pytest.approx((n * 8 + (n - n // 2) * 32) / (n * 32))
    assert build_graph(res.model, ctx.example_inputs).macs() <= 0.6 * dense


def test_a_one_stage_curriculum_warns_with_the_knob():
    with pytest.warns(MechanismWarning, match="give a curriculum of at least two stages"):
        res = get_method("da-nas").run(_ctx(curriculum=[1.0], multipliers=[0.5, 1.0]))
    assert res.engaged is False and res.telemetry["dropped_early"] == 0


def test_a_shrinking_curriculum_is_refused_and_the_model_is_unchanged():
    ctx = _ctx(curriculum=[1.0, 0.5])
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"options.curriculum=\[1.0, 0.5\]"):
        get_method("da-nas").run(ctx)
    assert all(torch.equal(before[k], v) for k, v in ctx.model.state_dict().items())


def test_supernet_search_prunes_half_the_ops_after_the_warm_up_and_counts_less_compute():
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 1, 8, 8, generator=g), torch.arange(16) % 4) for _ in range(2)]
    cfg = TrainConfig(epochs=1, lr=0.05, progress=False)
    torch.manual_seed(0)
    full = supernet_search(SuperNet((4, 4, 4), num_classes=4), data, [[0, 1, 2, 3]], config=cfg, keep=1.0)
    torch.manual_seed(0)
    net = SuperNet((4, 4, 4), num_classes=4)
    r = supernet_search(net, data, [[0, 1], [0, 1, 2, 3]], keep=0.5, final_keep=1, config=cfg)
    assert [len(a) for a in r["alive"]] == [1, 1, 1] and all(len(d) == 2 for d in r["dropped"][0])
    assert [layer.alive_indices() for layer in net.choice_layers()] == r["alive"]
    # the architecture logits learned (their own Adam), and the weights' optimizer never saw them
    assert all(float(a.detach().abs().max()) > 0 for a in net.arch_parameters())
    assert not any(p is a for p in net.parameters() for a in net.arch_parameters())
    # stage 1: half the images, all 4 ops; stage 2: all images, 2 ops per layer -> below one full 4-op pass x 2
    assert r["images"] == 16 + 32 and r["macs"] < 2 * full["macs"]
